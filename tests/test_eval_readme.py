"""The README's `srt-eval` commands work as printed (issue 11 item 2).

Each command is read from README.md (section "Evaluation: srt-eval") and run as a real subprocess
of the installed `srt-eval` script, in a scratch folder holding a copy of `configs/`. Only what the
README says to substitute is substituted: `DIR` (a model folder) and `runs/x` (an srt-train
output_dir) become the tiny test model; the OpenAI judge talks to a local OpenAI-compatible server
through `OPENAI_BASE_URL`, the variable the official client reads.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chat_server import ChatServer

from srt.critic_template import render_critique

ROOT = Path(__file__).resolve().parents[1]
SRT_EVAL = str(Path(sys.executable).with_name("srt-eval"))
SECRET = "sk-readme-test-3b9f0c7e1d5a-DO-NOT-LEAK"

TINY_CONFIG = "srt-eval run --config configs/eval_tiny.yaml"
SMOKE_RUN = (
    "srt-eval run --model base=tiny --model srt=tiny --mode srt=srt --benchmarks gsm8k,mgsm,alpaca_eval "
    "--limit 2 --max-new-tokens 16 --batch-size 4 --device auto "
    "--judge hf --set judge.model=tiny --set judge.max_new_tokens=16 --output runs/eval-smoke"
)
OPENAI_RUN = (
    "srt-eval run --model srt=runs/x/stage2/round1/model --answer-mode srt "
    "--benchmarks alpaca_eval,gsm8k,tydiqa,mgsm --judge openai --set judge.model=gpt-4o"
)
PAPER_RUN = "srt-eval run --config configs/eval.yaml"
PAPER_VALIDATE = "srt-eval validate --config configs/eval.yaml"
GENERATE = "srt-eval generate --model DIR --input q.jsonl --output a.jsonl --mode srt"


def readme_commands(section_only: bool = True) -> list[str]:
    """The `srt-eval ...` commands of the README's bash blocks (continuations joined, comments cut)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    if section_only:
        text = text.split("## Evaluation: `srt-eval`", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["srt-eval"]:
                commands.append(" ".join(words))
    return commands


def command(printed: str, **substitute: str) -> list[str]:
    """The README's command, as its words, with the README's placeholders substituted."""
    assert printed in readme_commands(), f"the README no longer prints {printed!r}"
    words = shlex.split(printed)
    for old, new in substitute.items():
        words = [w.replace(old, new) for w in words]
    return [SRT_EVAL, *words[1:]]


@pytest.fixture()
def workdir(tmp_path):
    """A scratch folder with the repository's configs, like a checkout."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    return tmp_path


def _env(workdir, **extra):
    env = {**os.environ, "HOME": str(workdir), "SRT_CACHE_DIR": str(workdir / "srt-cache")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    env.update(extra)
    return env


def _run(args, workdir, env, timeout=600):
    return subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readme_prints_exactly_the_tested_commands():
    assert readme_commands() == [TINY_CONFIG, SMOKE_RUN, OPENAI_RUN, PAPER_RUN, PAPER_VALIDATE, GENERATE]
    # Elsewhere in the README only `srt-eval plugins` (run by tests/test_cli.py).
    assert set(readme_commands(section_only=False)) == {
        TINY_CONFIG,
        SMOKE_RUN,
        OPENAI_RUN,
        PAPER_RUN,
        PAPER_VALIDATE,
        GENERATE,
        "srt-eval plugins",
    }


def test_tiny_config_runs_the_whole_suite_offline(workdir):
    res = _run(command(TINY_CONFIG), workdir, _env(workdir))
    assert res.returncode == 0, res.stderr[-3000:]
    out = workdir / "runs" / "eval-tiny"
    summary = json.loads((out / "summary.json").read_text())
    benchmarks = ["alpaca_eval", "gsm8k", "tydiqa", "mgsm", "judge_agreement", "refine_vs_rerank"]
    assert {m: sorted(r) for m, r in summary["results"].items()} == {
        "base": sorted(benchmarks),
        "base-srt": sorted(benchmarks),
    }
    assert summary["models"]["base-srt"]["answer_mode"] == "srt" and summary["models"]["base"]["answer_mode"] == "plain"
    for model in ("base", "base-srt"):
        for bench in benchmarks:
            assert (out / model / bench / "samples.jsonl").stat().st_size > 0
    alpaca = summary["results"]["base"]["alpaca_eval"]
    assert alpaca["meta"]["judge"]["name"] == "hf"
    assert alpaca["metrics"]["n_total"] + alpaca["metrics"]["judge_failures"] == 4
    assert summary["results"]["base-srt"]["alpaca_eval"]["metrics"]["srt_fallback_rate"] == 100  # random weights
    assert res.stdout.rstrip().endswith("results: runs/eval-tiny/summary.json, runs/eval-tiny/report.md")
    check_report(out, summary, benchmarks)


def check_report(out, summary, benchmarks):
    """Every benchmark has its section: a row per model with the SRT rates (numbers for srt answers,
    – for plain ones), a header with one unit per column, and its plots, written."""
    report = (out / "report.md").read_text()
    sections = {s.split("\n", 1)[0]: s for s in report.split("\n## ")[1:]}
    for bench in benchmarks:
        section = sections[bench]
        header = next(line for line in section.splitlines() if line.startswith("| model | answer mode |"))
        assert header.endswith("| srt_parse_rate (%) | srt_fallback_rate (%) |"), header
        for model, entry in summary["results"].items():
            row = next(line for line in section.splitlines() if line.startswith(f"| {model} |"))
            metrics = entry[bench]["metrics"]
            if "srt_fallback_rate" in metrics:  # srt answers of the random tiny model: all fall back
                assert metrics["srt_fallback_rate"] == 100 and row.endswith("| 100.0 |"), row
            else:
                assert row.endswith("| – | – |"), row
        plots = re.findall(r"!\[[^]]*\]\((plots/[^)]+\.png)\)", section)
        assert plots, f"{bench}: no plot"
        for plot in plots:
            assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    return sections


def test_smoke_run_with_the_new_flags(workdir):
    """--mode NAME=MODE, --limit, --max-new-tokens, --batch-size, --device auto and judge settings by
    --set judge.KEY=VALUE: a real run of the printed command on the tiny model."""
    res = _run(command(SMOKE_RUN), workdir, _env(workdir))
    assert res.returncode == 0, res.stderr[-3000:]
    out = workdir / "runs" / "eval-smoke"
    summary = json.loads((out / "summary.json").read_text())
    models = summary["models"]
    assert {m: (r["answer_mode"], r["batch_size"]) for m, r in models.items()} == {
        "base": ("plain", 4),
        "srt": ("srt", 4),
    }
    for record in models.values():
        assert record["sampling"]["max_new_tokens"] == record["score_sampling"]["max_new_tokens"] == 16
    judge = summary["results"]["base"]["alpaca_eval"]["meta"]["judge"]
    assert judge["name"] == "hf" and judge["max_new_tokens"] == 16
    for model in ("base", "srt"):
        results = summary["results"][model]
        assert sorted(results) == ["alpaca_eval", "gsm8k", "mgsm"]
        assert results["gsm8k"]["task"]["limit"] == 2 and results["gsm8k"]["task"]["max_gen_toks"] == 16
        assert len((out / model / "gsm8k" / "samples.jsonl").read_text().splitlines()) == 2
        assert len((out / model / "alpaca_eval" / "samples.jsonl").read_text().splitlines()) == 2
        languages = results["mgsm"]["task"]["languages"]
        assert len((out / model / "mgsm" / "samples.jsonl").read_text().splitlines()) == 2 * len(languages)
        assert results["gsm8k"]["units"]["strict_match"] == "fraction"
    srt_gsm8k = summary["results"]["srt"]["gsm8k"]["metrics"]
    assert srt_gsm8k["srt_answers"] == 2 and srt_gsm8k["srt_parse_rate"] == 0 and srt_gsm8k["srt_fallback_rate"] == 100
    sections = check_report(out, summary, ["gsm8k", "mgsm", "alpaca_eval"])
    strict = summary["results"]["base"]["gsm8k"]["metrics"]
    row = next(line for line in sections["gsm8k"].splitlines() if line.startswith("| base | plain |"))
    assert row.startswith(
        f"| base | plain | {100 * strict['strict_match']:.1f} ± {100 * strict['strict_match_stderr']:.1f} |"
    )
    assert "Per part (language) of mgsm:" in sections["mgsm"]
    assert res.stdout.rstrip().endswith("results: runs/eval-smoke/summary.json, runs/eval-smoke/report.md")


def _scripted_judge(messages):
    """A well-formed critique whose score is the response's word count (1..10)."""
    response = re.search(r"### Response\n(.*?)\n\n### Requirements", messages[-1]["content"], re.S).group(1)
    words = len(response.split())
    return render_critique(
        weaknesses=f"- Only {words} words.",
        suggestions="- Say more.",
        score=max(1, min(10, words)),
        improved_response=None,
    )


def test_one_srt_model_judged_by_openai(workdir, tiny_model_dir):
    model_dir = workdir / "runs" / "x" / "stage2" / "round1" / "model"  # `runs/x`: an srt-train output_dir
    model_dir.parent.mkdir(parents=True)
    model_dir.symlink_to(tiny_model_dir, target_is_directory=True)
    with ChatServer(responder=_scripted_judge) as server:
        env = _env(workdir, OPENAI_API_KEY=SECRET, OPENAI_BASE_URL=server.base_url)
        res = _run(command(OPENAI_RUN), workdir, env)
        requests = list(server.requests)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((workdir / "runs" / "eval" / "summary.json").read_text())
    results = summary["results"]["srt"]
    assert sorted(results) == ["alpaca_eval", "gsm8k", "mgsm", "tydiqa"]
    assert summary["models"]["srt"]["answer_mode"] == "srt"
    alpaca = results["alpaca_eval"]
    assert alpaca["meta"]["judge"]["name"] == "openai" and alpaca["meta"]["judge"]["model"] == "gpt-4o"
    assert alpaca["metrics"]["judge_failures"] == 0 and alpaca["metrics"]["win_rate"] is not None
    assert alpaca["meta"]["answer_mode"] == "srt" and results["gsm8k"]["meta"]["srt_stats"]["answered"] > 0
    # Both sides of each of the 16 fixture items were judged by "gpt-4o" with the key from the variable.
    assert len(requests) == 32 and {r.body["model"] for r in requests} == {"gpt-4o"}
    assert {r.authorization for r in requests} == {f"Bearer {SECRET}"}
    for path in (workdir / "runs" / "eval").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in res.stdout + res.stderr


def test_the_paper_config_says_what_it_needs(workdir, tiny_model_dir, monkeypatch):
    """Offline the paper config cannot run (hub model, GPU, API judge): run and validate stop at the
    first thing missing, write nothing; with the README's substitutions (your models, a device that
    exists here, the key variable set) its benchmarks and judge plan cleanly."""
    env = _env(workdir, HF_HUB_OFFLINE="1")
    for printed in (PAPER_VALIDATE, PAPER_RUN):
        res = _run(command(printed), workdir, env)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith("Error: model 'base': 'allenai/tulu-2-7b' is neither a local folder nor in the hub")
        assert "HF_HUB_OFFLINE=1" in lines[0]
        assert not (workdir / "runs").exists()

    import torch

    from srt.eval.plan import plan_eval
    from srt.eval.runner import load_eval_config, model_from_spec

    cfg = load_eval_config(workdir / "configs" / "eval.yaml")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    specs = [s.model_copy(update={"path": str(tiny_model_dir), "device": device}) for s in cfg.models]
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    plan = plan_eval([model_from_spec(s) for s in specs], cfg.benchmarks, workdir / "runs" / "eval", judge=cfg.judge)
    assert [b.name for b in plan.benchmarks] == list(cfg.benchmarks)
    judged = {b.name: b.judge for b in plan.benchmarks if b.judge}
    assert judged == {"alpaca_eval": "openai", "refine_vs_rerank": "openai"}
    assert [m.answer_mode for m in plan.models] == ["plain", "srt", "srt"]
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    "variant", [[], ["--mode", "plain"], ["--mode", "rerank", "--n", "16"]], ids=["srt", "plain", "rerank"]
)
def test_generate(workdir, tiny_model_dir, variant):
    """The printed command, and the two the README's comment names (`plain`, `rerank --n 16`)."""
    questions = [
        '{"id": "q1", "instruction": "Name three prime numbers."}',
        '{"instruction": "What is the capital of France?"}',
    ]
    if "rerank" in variant:
        questions = questions[:1]  # 16 candidates, each self-scored: one instruction is enough
    (workdir / "q.jsonl").write_text("".join(q + "\n" for q in questions))
    args = command(GENERATE, DIR=str(tiny_model_dir))
    if variant:
        at = args.index("--mode")
        args = args[:at] + variant
    res = _run(args, workdir, _env(workdir))
    assert res.returncode == 0, res.stderr[-3000:]
    mode = variant[1] if variant else "srt"
    rows = [json.loads(line) for line in (workdir / "a.jsonl").read_text().splitlines()]
    assert [(r["id"], r["mode"]) for r in rows] == [("q1", mode), ("line-2", mode)][: len(questions)]
    stats = json.loads(res.stdout)
    assert stats["generated"] == len(questions) and stats["answered"] == len(questions)
    if mode == "srt":
        assert stats["fallback_unparseable"] + stats["parsed"] == 2
    if mode == "rerank":
        assert all(len(r["trace"]["candidates"]) == 16 for r in rows)
