"""Shared fixtures: the tiny in-process Llama (srt/tiny.py), saved once per test session."""

import os

# Never touch the network from tests: a hub lookup otherwise takes 24-48 s to fail.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny model gains nothing from intra-op threads, and on a small shared machine (2 cores, several
# pytest workers) they oversubscribe the CPU and make generation ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a saved HF folder (config, weights, tokenizer with chat template, generation config)."""
    from srt.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    """A fresh float32 model per test (tests may train or wrap it, so it is not shared)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval()
