"""Bad input, run through the real ``dpo-ppo`` entrypoint: each fails before any stage with one
line on stderr that names the key, no Python traceback, and nothing new in the cache."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DPO_PPO = str(Path(sys.executable).with_name("dpo-ppo"))


def _folders(root: Path) -> dict:
    """Local folders that are wrong in one way each (planted: we know what each one lacks)."""
    from datasets import Dataset, DatasetDict

    empty = root / "empty"
    empty.mkdir()
    no_label = root / "no_label"
    DatasetDict({split: Dataset.from_dict({"text": ["good", "bad"], "stars": [5, 1]})
                 for split in ("train", "test")}).save_to_disk(str(no_label))
    no_test = root / "no_test"
    DatasetDict({"train": Dataset.from_dict({"text": ["good"], "label": [1]})}).save_to_disk(str(no_test))
    config_only = root / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    causal_lm = root / "causal_lm"  # looks complete, but is no sequence classifier
    causal_lm.mkdir()
    (causal_lm / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (causal_lm / "model.safetensors").write_bytes(b"")
    (causal_lm / "tokenizer.json").write_text("{}")
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    return {"empty": empty, "no_label": no_label, "no_test": no_test, "config_only": config_only,
            "causal_lm": causal_lm, "a_file": a_file, **_data_folders(root), **_model_folders(root)}


LONG = "The acting was wonderful and the plot kept me guessing until the very last scene of the film. " * 2


def _reviews(n: int, short: int = 0) -> dict:
    """``n`` long reviews of alternating label (1, 0, ...), then ``short`` two-byte ones."""
    return {"text": [f"{i} {LONG}" for i in range(n)] + ["ok"] * short,
            "label": [1 - i % 2 for i in range(n)] + [i % 2 for i in range(short)]}


def _data_folders(root: Path) -> dict:
    """Data folders whose content (not their layout) would change what is measured."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    def save(name, train, test, features=None):
        DatasetDict({"train": Dataset.from_dict(train, features=features),
                     "test": Dataset.from_dict(test, features=features)}).save_to_disk(str(root / name))
        return root / name

    three = {"text": [f"{i} {LONG}" for i in range(6)], "label": [0, 1, 2] * 2}
    strings = {"text": [f"{i} {LONG}" for i in range(4)], "label": ["yes", "no"] * 2}
    empty_text = {"text": [LONG, "  ", LONG, LONG], "label": [1, 0, 1, 0]}
    one_class = {"text": [f"{i} {LONG}" for i in range(4)], "label": [1] * 4}
    unclear = Features({"text": Value("string"), "label": ClassLabel(names=["fresh", "rotten"])})
    return {
        "two_test": save("two_test", _reviews(40), _reviews(2)),           # item 2: 2 test reviews
        "short_test": save("short_test", _reviews(40), _reviews(10, short=30)),  # 10 of 40 reach a prefix
        "short_train": save("short_train", _reviews(0, short=40), _reviews(40)),  # no train review is long
        "three_labels": save("three_labels", three, three),                # item 3
        "string_labels": save("string_labels", strings, strings),
        "empty_text": save("empty_text", _reviews(40), empty_text),
        "one_class": save("one_class", one_class, _reviews(40)),
        "unclear_names": save("unclear_names", _reviews(40), _reviews(40), unclear),
    }


def _model_folders(root: Path) -> dict:
    """Model and classifier folders, complete, that do not fit the job (items 4, 5)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from fixtures import toy_model, toy_tokenizer

    tok = toy_tokenizer()
    short = root / "short_context"  # a real context of 64 tokens, whatever model.context_length says
    toy_model(tok, context=64).save_pretrained(str(short))
    tok.save_pretrained(str(short))
    no_pad = root / "no_pad_no_eos"
    toy_model(tok).save_pretrained(str(no_pad))
    bare = toy_tokenizer()
    bare.pad_token = bare.eos_token = None
    bare.save_pretrained(str(no_pad))
    out = {"short_context": short, "no_pad_no_eos": no_pad}
    for name, labels in {"three_label_cls": ["negative", "neutral", "positive"],
                         "reversed_cls": ["POSITIVE", "NEGATIVE"],
                         "four_label_cls": ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]}.items():
        config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                            num_labels=len(labels), id2label=dict(enumerate(labels)),
                            label2id={n: i for i, n in enumerate(labels)}, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        GPT2ForSequenceClassification(config).save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        out[name] = root / name
    return out


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# (overrides, what the one line must contain: the key first, then any further words)
CASES = [
    (["+algorithm.lerning_rate=1e-5"], ["algorithm.lerning_rate", "closest valid key is algorithm.lr"]),
    (["+lerning_rate=1e-5"], ["lerning_rate", "closest valid key is algorithm.lr"]),
    (["algorithm.lerning_rate=1e-5"], ["algorithm.lerning_rate", "closest valid key is algorithm.lr"]),
    (["+analysis.extra.depth=1"], ["analysis.extra", "closest valid key is analysis."]),
    (["algorithm.kl_target=3"], ["algorithm.kl_target", "algorithm=ppo"]),
    (["algorithm=ppo", "algorithm.beta=0.5"], ["algorithm.beta", "algorithm=dpo"]),
    (["algorithm.lr=nan"], ["algorithm.lr", "finite"]),
    (["algorithm.lr=inf"], ["algorithm.lr", "finite"]),
    (["algorithm.beta=nan"], ["algorithm.beta", "finite"]),
    (["eval.temperature=-inf"], ["eval.temperature", "finite"]),
    (["seed=-5"], ["seed", "[0, 2^32-1]"]),
    (["seed=4294967296"], ["seed", "[0, 2^32-1]"]),
    (["device=tpu"], ["device", "auto, cpu, cuda, cuda:N or mps"]),
    (["device=cuda:99"], ["device", "cuda:99"]),
    (["analysis.device=gpu"], ["analysis.device"]),
    (["algorithm=foo"], ["algorithm=foo", "dpo, grpo, ppo, rloo"]),
    (["algorithm.beta=high"], ["algorithm.beta", "'high'"]),
    (["seed=abc"], ["seed", "'abc'"]),
    (["algorithm.beta=-1"], ["algorithm.beta", "> 0"]),
    (["model.num_heads=3"], ["model.num_heads", "hidden_size"]),
    (["foo"], ["'foo'", "key=value"]),
    (["hydra.run.dir={a_file}/job"], ["hydra.run.dir", "Not a directory"]),
    (["cache_dir={a_file}/cache"], ["cache_dir", "is a file"]),
    (["classifier.source={empty}"], ["classifier.source", "empty folder"]),
    (["model.source={config_only}"], ["model.source", "model weights", "tokenizer"]),
    (["data.source={no_label}"], ["data.source", "'label' column"]),
    (["data.source={no_test}"], ["data.source", "'test' split"]),
    (["classifier.source={causal_lm}", "classifier.finetune=false"], ["classifier.source", "not a sequence classifier"]),
    # issue 20, item 2: evaluation never reuses a test review
    (["data.source={two_test}", "eval.num_prompts=20"],
     ["Config error: eval.num_prompts:", "has 2 reviews", "set eval.num_prompts <= 2"]),
    (["data.source={short_test}", "eval.num_prompts=20"],
     ["Config error: eval.prefix_len:", "at most 10 of the 40 reviews", "eval.prefix_len=25",
      "lower eval.prefix_len or set eval.num_prompts <= 10"]),
    (["data.num_reviews=50", "eval.num_prompts=32"],
     ["Config error: eval.num_prompts:", "data.source=synthetic has 10 reviews", "set eval.num_prompts <= 10"]),
    # item 3: what the labels and texts mean is read
    (["data.source={three_labels}", "eval.num_prompts=2"], ["Config error: data.source:", "its labels are 0, 1, 2",
                                                            "0 = negative, 1 = positive"]),
    (["data.source={string_labels}", "eval.num_prompts=2"], ["Config error: data.source:", "'no', 'yes'",
                                                             "do not name negative and positive"]),
    (["data.source={empty_text}", "eval.num_prompts=2"], ["Config error: data.source:", "split 'test' has 1 empty",
                                                          "row 1"]),
    (["data.source={one_class}", "eval.num_prompts=2"], ["Config error: data.source:", "split 'train' holds only "
                                                         "positive reviews", "both classes"]),
    (["data.source={unclear_names}", "eval.num_prompts=2"], ["Config error: data.source:", "fresh, rotten",
                                                             "do not say which class is positive"]),
    # item 4: classifiers of more than two labels, and label names that contradict the config
    (["classifier.source={three_label_cls}", "classifier.finetune=false"],
     ["Config error: classifier.positive_label:", "1 is 'neutral'", "0=negative, 1=neutral, 2=positive"]),
    (["classifier.source={reversed_cls}", "classifier.finetune=false"],
     ["Config error: classifier.positive_label:", "1 is 'NEGATIVE'"]),
    (["classifier.source={four_label_cls}", "classifier.finetune=false", "classifier.positive_label=2"],
     ["Config error: classifier.negative_label:", "4 labels", "say which is negative"]),
    (["classifier.source={three_label_cls}", "classifier.finetune=false", "classifier.positive_label=happy"],
     ["Config error: classifier.positive_label:", "'happy' names no label"]),
    (["classifier.source={three_label_cls}", "classifier.finetune=false", "classifier.positive_label=5"],
     ["Config error: classifier.positive_label:", "5 is not a label"]),
    (["classifier.positive_label=2"], ["Config error: classifier.positive_label:", "0, 1"]),
    # item 5: the model folder against what the job needs; a prefix no review reaches
    (["model.source={short_context}", "model.context_length=256"],
     ["Config error: algorithm.prefix_len:", "= 73 tokens exceeds the context of model.source=", "(64 tokens)"]),
    (["model.source={no_pad_no_eos}"], ["Config error: model.source:", "neither a pad nor an EOS token"]),
    (["classifier.source={no_pad_no_eos}"], ["Config error: classifier.source:", "neither a pad nor an EOS token"]),
    (["data.source={short_train}", "eval.num_prompts=2"],
     ["Config error: algorithm.prefix_len:", "no review in the train split", "lower algorithm.prefix_len"]),
]
if not _cuda_available():  # the case: a CUDA device asked for where there is none
    CASES.append((["device=cuda"], ["device", "no CUDA device"]))


def _run(case, tmp: Path, folders: dict, index: int):
    overrides, expected = case
    run_dir, cache = tmp / f"run{index}", tmp / f"cache{index}"
    args = [o.format(root=tmp, **folders) for o in overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([DPO_PPO, f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "logger=none", *args],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc, run_dir, cache, expected


def test_bad_inputs_fail_with_one_line_naming_the_key(tmp_path):
    assert len(CASES) >= 20
    folders = _folders(tmp_path)
    before = {p: p.read_bytes() for p in folders.values() if p.is_file()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ic: _run(ic[1], tmp_path, folders, ic[0]), enumerate(CASES)))
    failures = []
    for (overrides, _), (proc, run_dir, cache, expected) in zip(CASES, results):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        problems = []
        if proc.returncode == 0:
            problems.append("exit status 0")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        elif not all(word in lines[0] for word in expected):
            problems.append(f"line lacks {expected}")
        if "Traceback" in proc.stderr + proc.stdout:
            problems.append("a traceback reached the terminal")
        if cache.exists():
            problems.append(f"cache touched: {sorted(p.name for p in cache.rglob('*'))}")
        if (run_dir / "results.json").exists():
            problems.append("a stage started (results.json written)")
        if problems:
            failures.append(f"{overrides}: {'; '.join(problems)}\n  stderr: {proc.stderr.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    assert {p: p.read_bytes() for p in before} == before  # the file under cache_dir/hydra.run.dir is intact


def test_unwritable_output_folder_puts_the_traceback_in_a_temp_file_the_line_names(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([DPO_PPO, f"hydra.run.dir={blocker}/job", f"cache_dir={tmp_path}/cache", "logger=none"],
                          capture_output=True, text=True, timeout=120)
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and line.startswith("Error: cannot create the job folder")
    where = Path(line.rsplit("(traceback: ", 1)[1].rstrip(")"))
    try:
        assert "Traceback" in where.read_text() and "NotADirectoryError" in where.read_text()
    finally:
        where.unlink()


def test_an_unexpected_error_in_a_job_puts_its_traceback_in_the_job_folder(tmp_path, capsys):
    import pytest

    from dpo_ppo.cli.exits import exit_with_one_line

    def fail():
        raise RuntimeError("wandb could not start\nsecond line")

    try:
        fail()
    except RuntimeError as e:
        with pytest.raises(SystemExit) as exited:
            exit_with_one_line(e, str(tmp_path))
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err == (f"Error: RuntimeError: wandb could not start second line "
                   f"(traceback: {tmp_path / 'traceback.txt'})\n")
    assert "in fail" in (tmp_path / "traceback.txt").read_text()


# --------------------------------------------------------------------------- issue 20: past the config check
# (the same CLI; these run stages, so they use the shrunk embedded model of conftest.TINY)


def _toy_data(root: Path, name: str, n_train: int = 160, n_test: int = 40, reversed_names: bool = False) -> Path:
    """Toy reviews in a save_to_disk folder; with ``reversed_names`` a ClassLabel whose names say
    0 = positive (the labels stored accordingly)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from fixtures import toy_reviews

    texts, labels = toy_reviews(n_train + n_test, seed=3)
    names = ["pos", "neg"] if reversed_names else ["neg", "pos"]
    stored = [1 - y for y in labels] if reversed_names else labels
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    DatasetDict({"train": Dataset.from_dict({"text": texts[:n_train], "label": stored[:n_train]}, features=features),
                 "test": Dataset.from_dict({"text": texts[n_train:], "label": stored[n_train:]}, features=features)}
                ).save_to_disk(str(root / name))
    return root / name


def _cli(tmp: Path, *overrides: str, timeout: int = 600):
    from conftest import TINY

    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir, cache = tmp / "run", tmp / "cache"
    proc = subprocess.run([DPO_PPO, f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "logger=none", "threads=1",
                           "analysis=none", *TINY, *overrides], capture_output=True, text=True, timeout=timeout,
                          env=env)
    return proc, run_dir, cache


def test_eval_prefixes_no_review_reaches_in_tokens_are_refused_before_the_scorer(tmp_path):
    """Long enough in bytes (the config check's bound), too short in tokens: the prompts stage,
    right after the base model's tokenizer exists and before the classifier is trained, refuses."""
    data = _toy_data(tmp_path, "data")
    proc, run_dir, cache = _cli(tmp_path, f"data.source={data}", "eval.prefix_len=30", "eval.num_prompts=30")
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("Job failed:")]
    assert "ConfigError: eval.prefix_len: only " in line and "of the 40 reviews in the test split" in line
    assert "longer than eval.prefix_len=30 tokens, fewer than eval.num_prompts=30" in line
    assert "Traceback" not in proc.stderr
    assert (cache / "base").is_dir() and not (cache / "classifier").exists()  # refused before the scorer stage


def test_a_valid_job_reads_label_names_scores_three_labels_and_counts_its_prompts(tmp_path):
    """One small job through the CLI: a data folder whose ClassLabel names say 0 = positive (mapped,
    so training still goes toward positive), a 3-label classifier named by its labels, more
    training examples than train reviews (reuse is said: log line, results.json ``prompts``)."""
    from datasets import load_from_disk
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dpo_ppo import results as R
    from fixtures import toy_tokenizer

    data = _toy_data(tmp_path, "data", reversed_names=True)
    tok = toy_tokenizer()
    labels = ["negative", "neutral", "positive"]
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=3,
                        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(str(tmp_path / "cls"))
    tok.save_pretrained(str(tmp_path / "cls"))
    proc, run_dir, cache = _cli(tmp_path, f"data.source={data}", f"classifier.source={tmp_path / 'cls'}",
                                "classifier.finetune=false", "classifier.positive_label=Positive",
                                "algorithm.examples=200", "algorithm.prefix_len=8", "eval.prefix_len=8",
                                "eval.num_prompts=16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / R.RESULTS_FILE).read_text())
    assert res["status"] == R.FINISHED
    prompts = res[R.PROMPTS]
    assert set(prompts) == set(R.PROMPT_KEYS)
    assert prompts["eval"] == prompts["eval_distinct"] == 16
    assert prompts["train"] == 200 and prompts["train_distinct"] <= 160
    assert (f"the 200 training prefixes come from {prompts['train_distinct']} distinct reviews "
            f"({200 - prompts['train_distinct']} reused across passes over the 160 train reviews)") in proc.stdout
    corpus = load_from_disk(res["artifacts"]["corpus"])
    original = load_from_disk(str(data))
    assert list(corpus["train"]["label"]) == [1 - y for y in original["train"]["label"]]  # 1 = positive again
    scorer = json.loads((Path(res["artifacts"]["classifier"]) / "scorer.json").read_text())
    assert (scorer["positive_label"], scorer["negative_label"]) == (2, 0)


def test_the_reward_of_a_three_label_classifier_is_log_p_positive_minus_log_p_negative():
    """Issue 20, item 4: the reward for K labels (documented at classifier.positive_label);
    a binary scorer's numbers are those of before (the other label is the negative one)."""
    import pytest
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from dpo_ppo.data.scorer import Scorer
    from dpo_ppo.data.sources import classifier_labels
    from fixtures import toy_tokenizer

    tok = toy_tokenizer()
    torch.manual_seed(0)
    texts = ["a wonderful film", "a dull film with a weak plot", "it runs two hours"]
    for labels, positive, negative in ((["negative", "neutral", "positive"], "positive", None),
                                       (["LABEL_0", "LABEL_1"], 1, None)):
        config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                            num_labels=len(labels), id2label=dict(enumerate(labels)), pad_token_id=tok.pad_token_id)
        model = GPT2ForSequenceClassification(config).eval()
        pos, neg = classifier_labels(dict(enumerate(labels)), positive, negative)
        scorer = Scorer(model, tok, pos, negative_label=neg)
        with torch.no_grad():
            logp = torch.log_softmax(model(**tok(texts[:1], return_tensors="pt")).logits.float(), -1)[0]
        assert (pos, neg) == ((2, 0) if len(labels) == 3 else (1, 0))
        assert float(scorer.logits(texts[:1])[0]) == pytest.approx(float(logp[pos] - logp[neg]), rel=1e-5, abs=1e-6)
        p = scorer.p_positive(texts)
        assert bool(((p > 0) & (p < 1)).all())
        if len(labels) == 2:  # the binary reward as it always was
            assert torch.equal(scorer.logits(texts), Scorer(model, tok, 1).logits(texts))
