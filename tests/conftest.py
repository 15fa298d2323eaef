"""Shared fixtures: the real config composed with compose() and shrunk, and one artifact cache per
test session so the tiny base model and classifier are built once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from dpo_ppo.main import CONF_DIR  # noqa: E402  (registers the resolver and the schemas)

# the embedded default, shrunk to seconds: every stage and code path, toy sizes
TINY = [
    "model.pretrain_steps=40", "model.pretrain_induction_steps=0", "model.pretrain_repeats=0",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=4",
    "model.vocab_size=400", "model.pretrain_batch_size=16",
    "data.num_reviews=1200", "classifier.train_examples=400", "classifier.epochs=1",
    "classifier.hidden_size=32", "algorithm.examples=32", "algorithm.batch_size=8",
    "algorithm.completion_len=16", "algorithm.snapshot_every=16",
    "eval.num_prompts=32", "eval.completion_len=16", "eval.batch_size=64",
]


def compose_cfg(overrides=(), tiny=True):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=(TINY if tiny else []) + list(overrides))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests run toy-sized models, where torch's threads only add overhead (and thrash a busy
    2-core machine); subprocesses (the slow end-to-end tests) keep torch's default."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def default_cache(tmp_path_factory):
    """Artifacts of the embedded default at full size, shared by the slow tests."""
    return tmp_path_factory.mktemp("default-cache")
