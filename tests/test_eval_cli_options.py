"""srt-eval's smoke-test flags (issue 14): --limit, --device, --dtype, --batch-size, --max-new-tokens, --mode
NAME=MODE and judge settings through --set judge.KEY=VALUE map onto the eval config's fields; a bad
flag is one `Error:` line, exit 2; the report shows each benchmark with its units, `±` and SRT rates.
(The README's smoke command runs for real in tests/test_eval_readme.py.)"""

import pytest

from srt.errors import ConfigError
from srt.eval.report import format_value, metric_unit, render_markdown, srt_answer_metrics
from srt.eval.runner import cli_inputs

CONFIG = """\
models:
  - {name: base, path: tiny, sampling: {max_new_tokens: 900, temperature: 0.5}, batch_size: 2}
  - {name: srt, path: tiny, answer_mode: plain, score_sampling: {max_new_tokens: 300}}
benchmarks:
  gsm8k: {limit: 50, max_gen_toks: 256}
  alpaca_eval: {limit: 30}
  judge_agreement: {}
"""


def test_flags_map_onto_the_config_fields(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(CONFIG)
    inputs = cli_inputs(
        config_path=config,
        overrides=["benchmarks.gsm8k.limit=7", "judge.name=length", "judge.target_words=3"],
        modes=["srt=srt"],
        limit=2,
        device="auto",
        dtype="float32",
        batch_size=3,
        max_new_tokens=16,
    )
    base, srt = inputs["models"]
    assert (base.answer_mode, srt.answer_mode) == ("plain", "srt")
    assert base.device == srt.device == "cpu"  # auto without a GPU (the CPU test host)
    assert base.batch_size == srt.batch_size == 3
    assert base.dtype == srt.dtype == "float32"
    for m in (base, srt):
        assert m.sampling.max_new_tokens == m.candidate_sampling.max_new_tokens == m.score_sampling.max_new_tokens == 16
    assert base.sampling.temperature == 0.5  # the rest of the config's decoding is kept
    # --limit replaces every benchmark's own limit (and --set's); lm-eval's plain budget follows --max-new-tokens.
    assert inputs["benchmarks"] == {
        "gsm8k": {"limit": 2, "max_gen_toks": 16},
        "alpaca_eval": {"limit": 2},
        "judge_agreement": {"limit": 2},
    }
    assert inputs["judge"] == {"name": "length", "target_words": 3}

    # Without the flags the config stands as written.
    plain = cli_inputs(config_path=config)
    assert plain["benchmarks"]["gsm8k"] == {"limit": 50, "max_gen_toks": 256}
    assert plain["models"][0].sampling.max_new_tokens == 900 and plain["models"][0].batch_size == 2
    assert plain["models"][0].dtype == "auto"

    # --model NAME=PATH with --answer-mode for all, then --mode for one (in that order).
    cli = cli_inputs(
        models=["a=tiny", "b=tiny", "tiny"], benchmarks="gsm8k", answer_mode="srt", modes=["a=plain"], limit=1
    )
    assert [(m.name, m.answer_mode) for m in cli["models"]] == [("a", "plain"), ("b", "srt"), ("tiny", "srt")]
    assert cli["benchmarks"] == {"gsm8k": {"limit": 1}}


def test_limit_on_a_benchmark_without_one_is_an_error(monkeypatch):
    from pydantic import BaseModel

    import srt.registry

    class NoLimit(BaseModel):
        data: str = "x"

    class Bench:
        settings_model = NoLimit

    real = srt.registry.load_plugin
    monkeypatch.setattr(srt.registry, "load_plugin", lambda g, n: Bench if n == "nolimit" else real(g, n))
    with pytest.raises(ConfigError, match=r"^--limit: benchmark 'nl' \(plugin 'nolimit'\) has no `limit` setting"):
        cli_inputs(models=["tiny"], overrides=["benchmarks.nl.plugin=nolimit"], limit=2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "stage9=srt"], "Error: --mode stage9=srt: no model named 'stage9' in this run (models: base, srt)"),
        (
            ["--mode", "srt=refine"],
            "Error: --mode srt=refine: 'refine' is not an answer mode; use one of plain, srt, gated",
        ),
        (["--mode", "srt"], "Error: --mode srt: give NAME=MODE for one model (e.g. --mode srt=srt)"),
        (
            ["--device", "gpu0"],
            "Error: model 'base': device 'gpu0' is not a torch device (use cpu, cuda, cuda:N or auto)",
        ),
        (["--model", "x="], "Error: --model x=: give PATH or NAME=PATH"),
    ],
    ids=["unknown_model", "bad_mode", "no_name", "bad_device", "empty_path"],
)
def test_a_bad_flag_is_one_error_line(cli, tmp_path, args, message):
    out = tmp_path / "out"
    for command in ("validate", "run"):
        code, stdout, stderr = cli(
            command, "--model", "base=tiny", "--model", "srt=tiny", *args, "--benchmarks", "gsm8k", "--output", out
        )
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(message), stderr
    assert not out.exists()


def test_bad_numbers_are_refused_by_the_flag(cli):
    code, _, stderr = cli("validate", "--model", "tiny", "--benchmarks", "gsm8k", "--limit", "0")
    assert code == 2 and "Invalid value for '--limit': 0 is not in the range x>=1" in stderr


def test_validate_shows_what_the_flags_set(cli, tmp_path):
    code, stdout, stderr = cli(
        "validate",
        *("--model", "base=tiny", "--model", "srt=tiny", "--mode", "srt=srt", "--benchmarks", "gsm8k,judge_agreement"),
        *(
            "--limit",
            "2",
            "--device",
            "auto",
            "--batch-size",
            "4",
            "--max-new-tokens",
            "16",
            "--output",
            tmp_path / "o",
        ),
    )
    assert code == 0, stderr
    assert (
        "model base                 tiny  (answer_mode plain, dtype auto, cpu, batch_size 4, max_new_tokens 16)"
        in stdout
    )
    assert (
        "model srt                  tiny  (answer_mode srt, dtype auto, cpu, batch_size 4, max_new_tokens 16)" in stdout
    )
    assert "benchmark gsm8k, limit 2" in stdout and "benchmark judge_agreement, limit 2" in stdout


def test_help_names_every_flag_and_the_judge_settings(cli):
    for command in ("run", "validate"):
        code, stdout, _ = cli(command, "--help")
        assert code == 0
        text = " ".join(stdout.split())
        for flag in ("--limit N", "--device DEVICE", "--batch-size N", "--max-new-tokens N", "--mode NAME=MODE"):
            assert flag in text
        assert "Judge settings: --set judge.KEY=VALUE" in text and "--set judge.model=gpt-4o" in text


# -- the report ---------------------------------------------------------------------------------


def test_units_and_srt_rates():
    assert metric_unit("strict_match", {"strict_match": "fraction"}) == "fraction"
    assert metric_unit("strict_match_stderr", {"strict_match": "fraction"}) == "fraction"
    assert metric_unit("en/f1") == metric_unit("exact_match_stderr") == "fraction"  # lm-eval's, undeclared
    assert [metric_unit(m) for m in ("win_rate", "standard_error", "en/accuracy", "score_parse_rate")] == [
        "percent"
    ] * 4
    assert [metric_unit(m) for m in ("n_total", "ties", "avg_length", "new_tokens_refine", "rubric_mean")] == [
        "count",
        "count",
        "characters",
        "tokens",
        "score",
    ]
    assert format_value(0.5625, "fraction", 0.0721) == "56.2 ± 7.2"
    assert format_value(56.25, "percent", 7.21) == "56.2 ± 7.2"
    assert format_value(3, "count") == "3" and format_value(None, "percent") == "n/a"

    # Whatever a plugin records: flags on the sample, lm-eval's srt_* keys, or an answer trace.
    assert srt_answer_metrics([{"parsed": True, "fallback": False}, {"parsed": False, "fallback": True}]) == {
        "srt_answers": 2,
        "srt_parse_rate": 50.0,
        "srt_fallback_rate": 50.0,
    }
    assert srt_answer_metrics([{"srt_parsed": True, "srt_fallback": False}] * 3)["srt_fallback_rate"] == 0.0
    traced = [{"trace": {"mode": "srt", "parsed": False, "fallback": True}, "other": {"mode": "rerank"}}]
    assert srt_answer_metrics(traced)["srt_fallback_rate"] == 100.0
    assert srt_answer_metrics([{"trace": {"mode": "plain", "parsed": None, "fallback": None}}]) == {}


def test_report_table_one_unit_per_column():
    summary = {
        "run": {"seed": 0, "package_versions": {}},
        "models": {"base": {"answer_mode": "plain"}, "srt": {"answer_mode": "srt"}},
        "results": {
            "base": {
                "gsm8k": {
                    "metrics": {"strict_match": 0.5, "strict_match_stderr": 0.1, "en/strict_match": 0.5},
                    "units": {
                        "strict_match": "fraction",
                        "strict_match_stderr": "fraction",
                        "en/strict_match": "fraction",
                    },
                }
            },
            "srt": {
                "gsm8k": {
                    "metrics": {
                        "strict_match": 0.5625,
                        "strict_match_stderr": 0.0721,
                        "en/strict_match": 0.5625,
                        "srt_answers": 16,
                        "srt_parse_rate": 87.5,
                        "srt_fallback_rate": 12.5,
                    },
                    "units": {
                        "strict_match": "fraction",
                        "strict_match_stderr": "fraction",
                        "en/strict_match": "fraction",
                    },
                },
                "alpaca_eval": {"metrics": {"win_rate": 61.0, "standard_error": 3.04, "srt_parsed_rate": 90.0}},
            },
        },
    }
    text = render_markdown(summary)
    assert "| model | answer mode | strict_match (%) | srt_parse_rate (%) | srt_fallback_rate (%) |" in text
    assert "| base | plain | 50.0 ± 10.0 | – | – |" in text
    assert "| srt | srt | 56.2 ± 7.2 | 87.5 | 12.5 |" in text
    assert "| srt | en | 56.2 |" in text  # the per-language table
    # alpaca_eval's own name for the parse rate fills the column; no fallback rate recorded: –.
    assert "| srt | srt | 61.0 ± 3.0 | 90.0 | – |" in text
    assert "srt_answers" not in text and "_stderr" not in text and "standard_error" not in text
