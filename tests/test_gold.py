"""The gold reward beside the proxy: the synthetic generator's lexicon log-odds (eval.gold=lexicon,
the embedded default), a ready classifier from a local folder (the paper's world), and the two
differing where they should: a policy trained against a flawed proxy raises it while gold falls."""

import copy
import math
import random
import re
from types import SimpleNamespace

import pytest
import torch

from dpo_ppo import results as R
from dpo_ppo.config.fields import ConfigError
from dpo_ppo.config.schema import EvalConfig, PPOAlgorithmConfig
from dpo_ppo.data import corpus as C
from dpo_ppo.data.scorer import LexiconGold, Scorer, gold_source, load_gold
from dpo_ppo.evaluate import evaluate_model
from dpo_ppo.results import read_eval_rows, write_eval_rows
from dpo_ppo.train.ppo import train_ppo
from fixtures import toy_model, toy_reviews, toy_tokenizer


def test_the_lexicon_weights_are_the_generators_own_shares():
    """q_word / q_verdict: how often the generator's sentiment words and verdicts name the label,
    measured again on freshly generated reviews (another seed than the constants came from)."""
    rng = random.Random(7)
    pos, neg = set(C.POSITIVE), set(C.NEGATIVE)
    agree = disagree = v_agree = v_disagree = 0
    for i in range(3000):
        label = i % 2 == 1
        text = C.synthetic_review(rng, label)
        words = re.findall(r"[a-z]+", text.lower())
        n_pos, n_neg = sum(w in pos for w in words), sum(w in neg for w in words)
        v_pos = sum(text.count(v) for v in C.POS_VERDICT)
        v_neg = sum(text.count(v) for v in C.NEG_VERDICT)
        agree += n_pos if label else n_neg
        disagree += n_neg if label else n_pos
        v_agree += v_pos if label else v_neg
        v_disagree += v_neg if label else v_pos
    assert agree / (agree + disagree) == pytest.approx(C.Q_WORD, abs=0.01)
    assert v_agree / (v_agree + v_disagree) == pytest.approx(C.Q_VERDICT, abs=0.02)


def test_lexicon_logit_by_hand():
    w, v = math.log(C.Q_WORD / (1 - C.Q_WORD)), math.log(C.Q_VERDICT / (1 - C.Q_VERDICT))
    assert C.lexicon_logit("The plot was dull, but the cast was superb.") == pytest.approx(0.0)
    assert C.lexicon_logit("The film runs about 120 minutes.") == 0.0
    assert C.lexicon_logit("Great acting, GREAT score. A must see.") == pytest.approx(2 * w + v)
    assert C.lexicon_logit("A boring, predictable plot. Avoid this one.") == pytest.approx(-2 * w - v)
    # whole words only: 'badly' and 'flatten' are not 'bad' and 'flat'
    assert C.lexicon_logit("badly flatten") == 0.0
    gold = LexiconGold()
    assert gold.p_positive(["great"]).item() == pytest.approx(C.Q_WORD, abs=1e-6)


def test_lexicon_gold_reads_the_corpus_labels():
    ds = C.make_synthetic(600, 0.5, seed=3)["test"]
    p = LexiconGold().p_positive(ds["text"])
    acc = ((p > 0.5).long() == torch.tensor(ds["label"])).float().mean().item()
    assert acc > 0.9, acc


def test_gold_auto_is_the_lexicon_on_the_synthetic_corpus_only():
    assert gold_source(EvalConfig(), "synthetic") == "lexicon"
    assert gold_source(EvalConfig(), "stanfordnlp/imdb") is None
    assert gold_source(EvalConfig(gold="none"), "synthetic") is None
    assert gold_source(EvalConfig(gold=None), "synthetic") is None
    assert gold_source(EvalConfig(gold="lexicon"), "stanfordnlp/imdb") == "lexicon"
    assert isinstance(load_gold(EvalConfig(), "synthetic"), LexiconGold)
    assert load_gold(EvalConfig(), "/data/imdb") is None


def _classifier_folder(path, id2label):
    """A tiny ready sentiment classifier saved by save_pretrained (the paper world's gold stand-in)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = toy_tokenizer()
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()}, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model.eval(), tok


def test_a_gold_classifier_from_a_local_folder(tmp_path):
    from dpo_ppo.inputs import check_gold

    model, tok = _classifier_folder(tmp_path / "gold", {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"})
    cfg = EvalConfig(gold=str(tmp_path / "gold"), gold_positive_label="positive")
    cfg.check()
    check_gold(cfg)
    gold = load_gold(cfg, "stanfordnlp/imdb")
    assert isinstance(gold, Scorer) and (gold.positive_label, gold.negative_label) == (2, 0)
    texts = toy_reviews(5)[0]
    expected = []
    with torch.no_grad():
        for t in texts:
            logp = torch.log_softmax(model(**tok(t, return_tensors="pt")).logits[0], -1)
            expected.append(float(logp[2] - logp[0]))
    torch.testing.assert_close(gold.logits(texts), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_bad_gold_settings_name_the_key(tmp_path):
    """A gold folder is read where the job runs (``inputs.check_gold``, run by dpo-ppo after config.load)."""
    from dpo_ppo.inputs import check_gold

    _classifier_folder(tmp_path / "gold", {0: "NEGATIVE", 1: "POSITIVE"})
    with pytest.raises(ConfigError, match=r"eval\.gold_positive_label.*'joy' names no label"):
        check_gold(EvalConfig(gold=str(tmp_path / "gold"), gold_positive_label="joy"))
    with pytest.raises(ConfigError, match=r"eval\.gold_positive_label.*set eval\.gold_positive_label"):
        check_gold(EvalConfig(gold=str(tmp_path / "gold"), gold_positive_label=0))  # 0 is NEGATIVE
    (tmp_path / "empty_weights").mkdir()
    (tmp_path / "empty_weights" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"eval\.gold.*missing: model weights"):
        check_gold(EvalConfig(gold=str(tmp_path / "empty_weights")))
    with pytest.raises(ConfigError, match=r"eval\.gold.*no such folder"):
        check_gold(EvalConfig(gold="./no/such/gold"))


def test_eval_rows_keep_the_gold_column_and_older_rows_still_read(tmp_path):
    rows = [{"prompt_id": i, "p_positive": 0.5, "completion_len": 3, "kl": 0.1, "kl_k1": 0.1,
             "gold_p_positive": 0.25 * i} for i in range(3)]
    write_eval_rows(tmp_path / "a.csv", rows)
    assert read_eval_rows(tmp_path / "a.csv")["gold_p_positive"] == [0.0, 0.25, 0.5]
    write_eval_rows(tmp_path / "b.csv", [{k: v for k, v in r.items() if k != "gold_p_positive"} for r in rows])
    cols = read_eval_rows(tmp_path / "b.csv")
    assert "gold_p_positive" not in cols and cols["p_positive"] == [0.5] * 3


# --------------------------------------------------------------------------- over-optimisation

NEUTRAL = ["the", "film", "plot", "was", "and", "it", "cast", "story"]
WORDS = C.POSITIVE[:8] + C.NEGATIVE[:9] + NEUTRAL  # NEGATIVE[8] is the flaw, "predictable"
FLAW = "predictable"


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = WORDS + ["<eos>", "<pad>"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


class OneWordProxy:
    """A deliberately flawed 'sentiment classifier': it rewards one word, a negative one."""

    def logits(self, texts):
        return torch.tensor([8.0 * t.split().count(FLAW) / max(1, len(t.split())) - 2.0 for t in texts])

    def p_positive(self, texts):
        return torch.sigmoid(self.logits(texts))


def test_a_policy_trained_on_a_flawed_proxy_raises_it_while_gold_falls(tmp_path):
    tok = _tokenizer()
    policy = toy_model(tok, context=64, seed=0)
    ref = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(1)
    neutral_ids = [WORDS.index(w) for w in NEUTRAL]
    prompts = [[neutral_ids[i] for i in torch.randint(len(neutral_ids), (4,), generator=g)] for _ in range(320)]
    train, test = prompts[:256], prompts[256:]
    eval_cfg = SimpleNamespace(batch_size=None, completion_len=8, temperature=1.0, seed=0)
    proxy, gold = OneWordProxy(), LexiconGold()
    before, rows = evaluate_model(ref, tok, proxy, test, eval_cfg, gold=gold)
    assert set(rows[0]) >= {"p_positive", "gold_p_positive"}
    cfg = PPOAlgorithmConfig(examples=256, lr=1e-2, batch_size=32, num_completions=2, completion_len=8,
                             rollout_prefixes=16, num_minibatches=2, ppo_epochs=4, snapshot_every=10 ** 6,
                             reward_kind="logit", init_kl_coef=0.05, kl_target=6.0)
    train_ppo(cfg, policy, ref, tok, train, proxy.p_positive, tmp_path, seed=0, log_fn=lambda m, step: None)
    after, rows = evaluate_model(policy.eval(), tok, proxy, test, eval_cfg, ref_model=ref, gold=gold)
    # both are recorded, and they part: the proxy rises (0.15 -> 0.80 when written), the gold falls (0.44 -> 0.02)
    assert after[R.P_POSITIVE_MEAN] > before[R.P_POSITIVE_MEAN] + 0.3, (before[R.P_POSITIVE_MEAN], after[R.P_POSITIVE_MEAN])
    assert after["gold_p_positive_mean"] < before["gold_p_positive_mean"] - 0.2, (
        before["gold_p_positive_mean"], after["gold_p_positive_mean"])
    assert after["gold_p_positive_mean"] == pytest.approx(sum(r["gold_p_positive"] for r in rows) / len(rows))
    assert after["kl_to_ref"] > 0


def test_the_report_draws_proxy_and_gold_along_kl_where_the_runs_have_gold(tmp_path):
    from dpo_ppo import report
    from dpo_ppo import results as R
    from sweepfab import write_job

    for root, gold in ((tmp_path / "with", True), (tmp_path / "without", False)):
        for algorithm, knobs in (("dpo", (0.1, 0.3)), ("ppo", (1.0, 3.0))):
            for i, knob in enumerate(knobs):
                for seed in range(2):
                    kl = 1.0 + 2 * i + 0.1 * seed
                    metrics = {R.KL: kl, R.REWARD: 0.5 + 0.1 * kl, R.REF_REWARD: 0.46}
                    if gold:  # over-optimised: the proxy rises with KL, gold falls
                        metrics.update({R.GOLD_REWARD: 0.5 - 0.05 * kl, R.REF_GOLD_REWARD: 0.5})
                    write_job(root, algorithm, knob, seed, metrics)
        report.build_report(root)
        md = (root / "report" / "report.md").read_text()
        assert ("## Proxy and gold reward" in md) is gold
        assert (root / "report" / "gold.png").exists() is gold
    assert (tmp_path / "with" / "report" / "gold.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_finished_before_the_gold_keys_is_the_same_job_at_their_defaults():
    """eval.gold* at their defaults leave a job's identity alone (results.LATE_DEFAULTS): a sweep
    relaunched after this change skips its finished jobs instead of calling them drifted."""
    from dpo_ppo import results as R

    before = {"eval": {"num_prompts": 5, "seed": 0}, "seed": 1}
    after = {"eval": {"num_prompts": 5, "seed": 0, "gold": "auto", "gold_positive_label": 1,
                      "gold_negative_label": None}, "seed": 1}
    assert R.config_key(after) == R.config_key(before)
    after["eval"]["gold"] = "/models/siebert"
    assert R.config_key(after) != R.config_key(before)


def test_the_reward_claims_read_gold_where_the_runs_have_it_and_the_proxy_otherwise(tmp_path):
    """C1-C3 (binary loss, gradient loss, polarisation) take the gold scorer's metric when the runs
    hold one, so that a policy gaming the trained classifier cannot pass for a finding; runs without
    gold are read on the proxy as before."""
    from dpo_ppo import results as R
    from dpo_ppo.report import facets as RF, verdicts as RV
    from dpo_ppo.report.claims import CLAIMS
    from dpo_ppo.report.load import load_sweep
    from sweepfab import write_job

    reward_claims = [c for c in CLAIMS if c.id in ("C1", "C2", "C3")]
    for root, gold in ((tmp_path / "with", True), (tmp_path / "without", False)):
        for algorithm, knobs in (("dpo", (0.1, 0.3, 1.0)), ("ppo", (1.0, 3.0, 6.0))):
            for i, knob in enumerate(knobs):
                for seed in range(3):
                    kl = 1.0 + i + 0.1 * seed
                    metrics = {R.KL: kl, R.REWARD: 0.6, R.REF_REWARD: 0.46,
                               R.policy_metric("binary_loss"): 0.3, R.policy_metric("gradient_loss"): 0.4,
                               R.policy_metric(R.P_POSITIVE_STD): 0.2}
                    if gold:
                        metrics.update({R.policy_metric(R.GOLD_BINARY_LOSS): 0.5,
                                        R.policy_metric(R.GOLD_GRADIENT_LOSS): 0.5,
                                        R.policy_metric(R.GOLD_P_POSITIVE_STD): 0.1})
                    write_job(root, algorithm, knob, seed, metrics)
        runs, _ = load_sweep(root)
        facets, _ = RF.make_facets(runs)
        rows = RV.claims_table(runs, facets, reward_claims, n_boot=50)
        read = {row.claim.id: row.metric for row in rows}
        assert set(read) == {"C1", "C2", "C3"}
        prefix = "eval/policy/gold_" if gold else "eval/policy/"
        assert all(m.startswith(prefix) for m in read.values()), read
