"""`srt-eval run --workers N` (config `workers:`): models evaluated at once, one process each, with
an equal share of the CPU threads. A 2-worker run writes exactly what a 1-worker run writes (samples,
metrics, comparisons) and resumes like one; the models really run in other processes; an error in a
worker is raised in the run and leaves the other model's finished pairs finished; a worker exits when
its parent is stopped (SIGTERM: the pool is terminated) or killed (SIGKILL: it notices within a
second); workers with a model that is not on the CPU is a plan error."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srt.errors import ConfigError, SrtError

DATA = Path(__file__).resolve().parents[1] / "configs" / "data"
BENCHMARKS = {
    "word_problems": {"data": str(DATA / "word_problems_heldout.jsonl"), "limit": 3},
    "out_of_template": {
        "plugin": "word_problems",
        "data": str(DATA / "word_problems_out_of_template.jsonl"),
        "limit": 2,
    },
}


def _models(extra_dir=None):
    from srt.eval.model import EvalModel

    models = [
        EvalModel("base", "tiny", batch_size=2, sampling={"max_new_tokens": 8}),
        EvalModel("srt", "tiny", answer_mode="srt", batch_size=2, sampling={"max_new_tokens": 24}),
        EvalModel("sampled", "tiny", batch_size=3, sampling={"max_new_tokens": 12, "temperature": 0.8, "seed": 3}),
    ]
    if extra_dir is not None:
        models.append(EvalModel("broken", str(extra_dir), batch_size=2, sampling={"max_new_tokens": 8}))
    return models


def _pairs(out: Path) -> dict:
    return {
        (model, bench): (out / model / bench / "samples.jsonl").read_text()
        for model in ("base", "srt", "sampled")
        for bench in BENCHMARKS
    }


@pytest.mark.slow
def test_two_workers_write_what_one_writes_in_other_processes_and_resume(tmp_path, capfd, caplog):
    from srt.eval.runner import run_eval

    caplog.set_level("INFO", logger="srt")  # the workers log at the parent's level, to their stderr

    compare = [["srt", "base"], ["sampled", "base"]]
    one = run_eval(_models(), BENCHMARKS, tmp_path / "one", compare=compare)
    capfd.readouterr()
    two = run_eval(_models(), BENCHMARKS, tmp_path / "two", compare=compare, workers=2)
    log = capfd.readouterr().err

    # The same answers, metrics and paired comparisons, model by model and benchmark by benchmark.
    assert _pairs(tmp_path / "two") == _pairs(tmp_path / "one")
    metrics = {m: {b: e["metrics"] for b, e in per.items()} for m, per in one["results"].items()}
    assert {m: {b: e["metrics"] for b, e in per.items()} for m, per in two["results"].items()} == metrics
    assert two["comparisons"] == one["comparisons"] and len(two["comparisons"]) == 6  # srt: answer and response
    assert list(two["results"]) == ["base", "srt", "sampled"]  # the config's order, not the finishing order
    assert not any(e["resumed"] for per in two["results"].values() for e in per.values())
    assert (one["run"]["workers"], two["run"]["workers"]) == (1, 2)
    assert "## Paired comparisons" in (tmp_path / "two" / "report.md").read_text()

    # Each model ran in a worker process: its log lines carry a pid that is not this process's.
    running = {model: pid for pid, model in re.findall(r"\[worker (\d+)\]: (\w+) / word_problems: running", log)}
    assert sorted(running) == ["base", "sampled", "srt"], log
    pids = set(running.values())
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2, running  # two processes at most

    again = run_eval(_models(), BENCHMARKS, tmp_path / "two", compare=compare, workers=2)
    assert all(e["resumed"] for per in again["results"].values() for e in per.values())
    assert again["comparisons"] == two["comparisons"]


@pytest.mark.slow
def test_an_error_in_a_worker_is_raised_and_the_finished_pairs_stay_finished(tmp_path, tiny_model_dir):
    import shutil

    from srt.eval.runner import run_eval

    broken = tmp_path / "broken"  # found by the plan (config and tokenizer), but it has no weights to load
    shutil.copytree(tiny_model_dir, broken, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    out = tmp_path / "eval"
    with pytest.raises(SrtError, match="cannot load model .*broken"):  # the CLI's one `Error:` line
        run_eval(_models(broken), BENCHMARKS, out, workers=2)
    finished = {p.parent.parent.name for p in out.glob("*/out_of_template/metrics.json")}
    # The broken model's job starts last (fewest new tokens, last in the config): by then two are done.
    assert len(finished) >= 2 and "broken" not in finished, finished
    resumed = run_eval(_models(), BENCHMARKS, out, workers=2)  # the run without the broken model
    assert {m for m, per in resumed["results"].items() if per["out_of_template"]["resumed"]} == finished


def _state(pid: int) -> str | None:
    """The process state letter (Z: a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)])
def test_workers_stop_when_their_parent_is_stopped_or_killed(tmp_path, signum, status):
    config = tmp_path / "eval.yaml"
    config.write_text(
        "models:\n"
        "  - {name: a, path: tiny, batch_size: 1, sampling: {max_new_tokens: 4000}}\n"
        "  - {name: b, path: tiny, batch_size: 1, sampling: {max_new_tokens: 4000}}\n"
        "benchmarks:\n"
        f"  word_problems: {{data: {DATA / 'word_problems_heldout.jsonl'}, limit: 64}}\n"
    )
    srt_eval = Path(sys.executable).with_name("srt-eval")
    proc = subprocess.Popen(
        [str(srt_eval), "run", "--config", str(config), "--output", str(tmp_path / "eval"), "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: set[int] = set()
    deadline = time.monotonic() + 120
    while len(pids) < 2 and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        pids.update(int(p) for p in re.findall(r"\[worker (\d+)\]: \w+ / word_problems: running", line))
    assert len(pids) == 2, f"workers never started (exit {proc.poll()})"
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=30) == status  # SIGTERM: the one-line interruption, exit 143
    deadline = time.monotonic() + 15
    while any(_state(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = {p: _state(p) for p in pids if _state(p) not in (None, "Z")}
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers still running after their parent was killed: {alive}"


def test_workers_need_every_model_on_the_cpu():
    from srt.eval.model import EvalModel
    from srt.eval.plan import check_workers

    cpu = EvalModel("a", "tiny")
    gpu = EvalModel("b", "tiny")
    gpu.device = "cuda:0"  # as resolved on a GPU machine (the plan's device check passes there)
    check_workers(1, [cpu, gpu])  # one worker: any device
    check_workers(4, [cpu])
    with pytest.raises(ConfigError, match=r"workers: 2 .* model 'b' on cuda:0 is not on the CPU; set workers: 1"):
        check_workers(2, [cpu, gpu])


def test_workers_flag_and_config_key(tmp_path):
    from srt.eval.runner import cli_inputs, cli_plan

    config = tmp_path / "eval.yaml"
    config.write_text(
        json.dumps(
            {
                "models": [{"name": "a", "path": "tiny"}],
                "benchmarks": {"word_problems": BENCHMARKS["word_problems"]},
                "workers": 3,
            }
        )
    )
    assert cli_inputs(config_path=config)["workers"] == 3
    assert cli_inputs(config_path=config, workers=1)["workers"] == 1  # the flag replaces the config's
    assert "2 models at once" in cli_plan(models=["a=tiny", "b=tiny"], config_path=config, workers=2).describe()
    config.write_text(json.dumps({"models": [{"path": "tiny"}], "benchmarks": {"word_problems": {}}, "workers": 0}))
    with pytest.raises(ConfigError, match="workers"):
        cli_inputs(config_path=config)
