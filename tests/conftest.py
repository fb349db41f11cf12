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


# The slow tier: whole pipelines, subprocesses, several processes, many training steps. `make test-fast`
# (pytest -m "not slow") runs the rest in under two minutes; `make test` (CI) runs everything.
SLOW_MODULES = {
    "test_guarantees.py",
    "test_pipeline.py",
    "test_stage2.py",
    "test_distributed.py",
    "test_eval_readme.py",
    "test_eval_runner.py",
    "test_plugin_guide.py",
    "test_loggers.py",
    "test_export_data.py",
    "test_demo.py",
    "test_gpu.py",
    "test_cli.py",
    "test_precision.py",
    "test_word_problems_benchmark.py",
    "test_eval_lm_eval.py",
}
SLOW_TESTS = {
    "test_ddp_spawn_shards_train_data_disjointly",
    "test_a_second_run_on_a_locked_output_dir_stops_before_generating",
    "test_check_records_strict_errors_are_one_line",
    "test_check_records_lenient_counts_and_rejects_file",
    "test_context_reaches_generation_critic_and_training",
    "test_self_critic_continues_after_the_feedback_header",
    "test_sharded_export_full_adapter_and_merged",
    "test_smollm2_converts_from_gguf_and_answers",
}
# The plan checks of test_guarantees are quick and say the most about a change: kept in the fast tier.
FAST_IN_SLOW = {"test_validate_names_each_mistake_in_one_line"}


@pytest.fixture()
def cli(capsys, monkeypatch):
    """``srt-eval ARGS`` in this process (its click main with a patched argv): (exit status, stdout, stderr)."""
    import logging
    import sys

    from srt.cli.eval import main

    srt_log = logging.getLogger("srt")

    def call(*args):
        handlers = list(srt_log.handlers)
        monkeypatch.setattr(sys, "argv", ["srt-eval", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            srt_log.handlers[:] = handlers  # run_cli adds a handler bound to this test's captured stderr
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.originalname if hasattr(item, "originalname") else item.name
        if name in FAST_IN_SLOW:
            continue
        if item.path.name in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
