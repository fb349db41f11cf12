"""CLI: --help, plugins listing, and user mistakes as one line + non-zero exit (no traceback)."""

import json
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
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "configs" / "data" / "word_problems_stage1.jsonl"
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path / 'run'}\ncritic:\n  name: reference\ndata:\n  stage1:\n    path: {data}\n"
        "    fields: {instruction: instruction, reference: answer}\n  stage2:\n"
        f"    path: {data}\n    fields: {{instruction: instruction}}\n"
    )
    res = run("train", "validate", "--config", str(cfg), "--set", "dpo.beta=0.1")
    assert res.returncode == 0, res.stderr
    assert (
        "beta: 0.1" in res.stdout
        and "stage2.round1.dpo" in res.stdout
        and res.stdout.rstrip().endswith("ok: nothing to fix")
    )
    assert not (tmp_path / "run").exists()  # validate writes nothing


def test_check_records_names_file_and_line_and_lenient_writes_rejects(tmp_path):
    good = {"id": "a", "instruction": "q", "response": "r", "stage": 1}
    path = tmp_path / "records.jsonl"
    path.write_text(
        json.dumps(good) + "\n" + '{"id": "b", "instruction": ""\n' + json.dumps({**good, "id": "c"}) + "\n"
    )
    res = run("train", "check-records", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{path}:2: invalid JSON" in res.stderr
    res = run("train", "check-records", str(path), "--lenient")
    assert res.returncode == 0, res.stderr
    assert "2 valid feedback records, 1 rejected" in res.stdout
    rejects = [json.loads(line) for line in (tmp_path / "records.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["file"]) for r in rejects] == [(2, str(path))] and "invalid JSON" in rejects[0]["reason"]
