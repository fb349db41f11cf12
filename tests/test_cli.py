"""CLI: --help, plugins listing, and user mistakes as one line + non-zero exit (no traceback)."""

import subprocess
import sys

import pytest


def run(*args):
    code = "import sys; from srt.cli.{0} import main; sys.argv = ['srt-{0}', *sys.argv[1:]]; main()".format(args[0])
    return subprocess.run([sys.executable, "-c", code, *args[1:]], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_help(tool):
    res = run(tool, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage: srt-" + tool in res.stdout and "plugins" in res.stdout


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_plugins_lists_builtins(tool):
    res = run(tool, "plugins")
    assert res.returncode == 0, res.stderr
    for name in ["openai", "hf", "self", "reference", "alpaca_eval", "gsm8k", "tydiqa", "mgsm"]:
        assert f"  {name} " in res.stdout
    assert "srt_builtin." in res.stdout


def test_bad_config_is_one_line_not_a_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sft:\n  epoch: 2\n")
    res = run("train", "validate", "--config", str(cfg))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and "sft.epoch: unknown key" in lines[-1]


def test_validate_prints_resolved_config_with_overrides(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("critic:\n  name: reference\n")
    res = run("train", "validate", "--config", str(cfg), "--set", "dpo.beta=0.1")
    assert res.returncode == 0, res.stderr
    assert "beta: 0.1" in res.stdout
