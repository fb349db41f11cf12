"""What srt guarantees a user (issue "Runs you can trust"), each shown on real runs of the tiny model:
real subprocesses, real signals, real checkpoints, the loopback chat server for the API critic.

README "What srt guarantees" lists these tests by name.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from srt.config import RunConfig
from srt.pipeline.feedback import CriticCall
from srt.records import FeedbackRecord, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data" / "word_problems_stage1.jsonl"
CLI = "import sys; from srt.cli.train import main; sys.argv=['srt-train', *sys.argv[1:]]; main()"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SRT_LOG_LEVEL": "INFO"}


def config(tmp_path: Path, model_dir: Path, **overrides) -> dict:
    """A whole SRT run on the tiny model: 8 + 8 word problems, LoRA with dropout (RNG matters)."""
    fields = {"id": "id", "instruction": "instruction", "reference": "answer"}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {
            "stage1": {"path": str(DATA), "fields": fields, "limit": 8},
            "stage2": {"path": str(DATA), "fields": fields, "offset": 8, "limit": 8},
        },
        "generation": {"batch_size": 4, "chunk_size": 4, "response": {"temperature": 0.7, "max_new_tokens": 8}},
        "critic": {"name": "reference"},
        "sft": {
            "epochs": 3,
            "micro_batch_size": 2,
            "global_batch_size": 2,
            "max_length": 512,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.3},
            "optim": {"lr": 1e-3},
        },
        "dpo": {
            "beta": 0.1,
            "epochs": 3,
            "micro_batch_size": 2,
            "global_batch_size": 2,
            "max_length": 512,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.3},
            "optim": {"lr": 1e-3},
        },
        "stage2": {"critic": {"name": "reference"}, "refinement_vs_response": ">="},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "log_every_n_steps": 1,
            "checkpoint_every_n_steps": 1,
        },
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cmd: str, cfg_path: Path, log: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, cmd, "--config", str(cfg_path), *extra],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env or ENV,
    )


def run_cli(cmd: str, cfg_path: Path, *extra: str, timeout: int = 600, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-c", CLI, cmd, "--config", str(cfg_path), *extra],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def wait_until(predicate, proc: subprocess.Popen | None = None, timeout: float = 300, poll: float = 0.05) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - a file caught mid-write: look again
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def execute(cfg: dict, command: str = "stage1", **kwargs):
    from srt.pipeline.run import execute as run

    return run(RunConfig.model_validate(cfg), command, **kwargs)


# -- 1. install: the wheel holds every package ------------------------------------------------------


def test_wheel_holds_every_package_and_entry_point(tmp_path):
    """`pip install .` builds a wheel; package discovery must put every srt/srt_builtin package in it
    (the CI script also installs it into a clean venv and runs the tiny pipeline from there)."""
    import zipfile

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("srt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent.relative_to(REPO).as_posix() for p in (REPO / "srt").rglob("__init__.py")]
    packages += [
        "srt_builtin/" + p.parent.relative_to(REPO / "plugins" / "srt_builtin").as_posix()
        for p in (REPO / "plugins" / "srt_builtin").rglob("__init__.py")
    ]
    for package in packages:
        assert f"{package.removesuffix('/.')}/__init__.py" in names, package
    assert {"srt/pipeline/run.py", "srt/demo/run_demo.py", "srt_builtin/critics/openai_critic.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "srt-train = srt.cli.train:main" in text and "reference = srt_builtin.critics" in text


# -- 2. plan, then execute --------------------------------------------------------------------------


MISTAKES = [
    ({"trainer.precision": "bf17"}, "trainer.precision: 'bf17' is not a Lightning precision"),
    ({"trainer.precision": "bf16-true"}, "trains the weights in half precision"),
    ({"trainer.accelerator": "gpu"}, "no CUDA GPU"),
    ({"trainer.strategy": "fsdp"}, "needs GPUs"),
    ({"trainer.strategy": "ddp_typo"}, "unknown strategy 'ddp_typo'"),
    ({"trainer.devices": 0}, "trainer.devices must be >= 1"),
    ({"sft.global_batch_size": 3}, "sft: global_batch_size 3 is not divisible"),
    ({"dpo.global_batch_size": 5, "dpo.micro_batch_size": 2}, "dpo: global_batch_size 5 is not divisible"),
    (
        {"critic": {"name": "reference", "rel_tolerence": 0.1}},
        "critic: srt.critics plugin 'reference': invalid settings: rel_tolerence: unknown key",
    ),
    ({"critic": {"name": "reference", "rel_tolerance": "x"}}, "rel_tolerance: Input should be a valid number"),
    ({"critic": {"name": "openai"}}, "critic: srt.critics plugin 'openai': invalid settings: missing field 'model'"),
    (
        {"critic": {"name": "openai", "model": "gpt-4", "api_key_env": "SRT_TEST_UNSET_KEY"}},
        "SRT_TEST_UNSET_KEY is not set",
    ),
    ({"critic": {"name": "nosuchcritic"}}, "unknown srt.critics plugin 'nosuchcritic'"),
    ({"stage2.critic": {"name": "hf"}}, "stage2.critic: critic 'hf': set critic.model"),
    ({"stage2.critic": {"name": "self", "temprature": 0}}, "temprature: unknown key"),
    ({"data.stage1.fields": {"instruction": "instruction"}}, "critic 'reference' needs gold answers"),
    ({"data.stage1.fields": {"instruction": "question", "reference": "answer"}}, "instruction <- 'question' not found"),
    ({"data.stage1.path": "/nonexistent/q.jsonl"}, "data.stage1.path: instructions file not found"),
    ({"data.stage2.offset": 10_000}, "data.stage2: no rows"),
    ({"model.path": "/nonexistent/model"}, "model.path: model folder '/nonexistent/model' does not exist"),
    ({"model.path": "org/not-cached-model"}, "neither a local folder nor in the hub cache, and HF_HUB_OFFLINE=1"),
    ({"generation.backend": "openai"}, "generation.server: missing field 'base_url'"),
    ({"generation.backend": "openai", "generation.server": {"base_url": "http://u:pw@localhost:1/v1"}}, "credential"),
    (
        {"critic": {"name": "openai", "model": "m", "api_key": "sk-live-0123456789abcdefghij"}},
        "critic.api_key looks like a credential",
    ),
    (
        {
            "critic": {
                "name": "openai",
                "model": "m",
                "extra_body": {"headers": {"Authorization": "Bearer abcdefgh12345"}},
            }
        },
        "critic.extra_body.headers.Authorization looks like a credential",
    ),
    ({"output_dir": "/proc/srt-run"}, "cannot create output_dir /proc/srt-run"),
    ({"trainer.fsdp": {"precision": "bf16"}}, "trainer.fsdp is set but trainer.strategy is 'auto'"),
    (
        {"trainer.strategy": "fsdp2", "dpo.lm_head_chunk_size": 256},
        "dpo.lm_head_chunk_size does not work with trainer.strategy 'fsdp2'",
    ),
]


@pytest.mark.parametrize("overrides, message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_validate_names_each_mistake_in_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys, overrides, message):
    """`srt-train validate` runs the plan `run` makes: one `Error:` line, exit 2, nothing written."""
    from srt.cli.train import main

    monkeypatch.delenv("SRT_TEST_UNSET_KEY", raising=False)
    cfg_path = write_config(tmp_path, config(tmp_path, tiny_model_dir, **overrides))
    monkeypatch.setattr(sys, "argv", ["srt-train", "validate", "--config", str(cfg_path), "-q"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "run").exists()
    assert "sk-live" not in err and "abcdefgh12345" not in err and "pw@" not in err


def test_output_dir_that_is_a_file_is_one_error_line(tmp_path, tiny_model_dir):
    (tmp_path / "run").write_text("not a directory")
    res = run_cli("run", write_config(tmp_path, config(tmp_path, tiny_model_dir)))
    assert (
        res.returncode == 2 and res.stderr.strip() == f"Error: output_dir {tmp_path / 'run'} is a file, not a directory"
    )


def test_a_mistake_stops_the_run_before_any_model_is_loaded(tmp_path, tiny_model_dir, monkeypatch):
    """`srt-train run` with a stage-2 critic whose key variable is unset: nothing generated in stage 1."""
    monkeypatch.delenv("SRT_TEST_UNSET_KEY", raising=False)
    cfg = config(
        tmp_path,
        tiny_model_dir,
        **{"stage2.critic": {"name": "openai", "model": "m", "api_key_env": "SRT_TEST_UNSET_KEY"}},
    )
    env = {k: v for k, v in ENV.items() if k != "SRT_TEST_UNSET_KEY"}
    res = run_cli("run", write_config(tmp_path, cfg), env=env, timeout=120)
    assert res.returncode == 2 and "SRT_TEST_UNSET_KEY" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


# -- 3. no silent drift ------------------------------------------------------------------------------


def test_changed_settings_refuse_a_finished_step_and_restart_redoes_it(tmp_path, tiny_model_dir):
    from srt.pipeline.steps import DriftError

    cfg = config(tmp_path, tiny_model_dir, **{"sft.epochs": 1})
    model = execute(cfg)
    out = Path(cfg["output_dir"])
    done = json.loads((model / "srt_done.json").read_text())
    manifest = (out / "stage1" / "manifest.json").read_bytes()

    changed = config(tmp_path, tiny_model_dir, **{"sft.epochs": 2})
    with pytest.raises(DriftError) as exc:
        execute(changed)
    msg = str(exc.value)
    assert "stage1.sft finished earlier with other settings (sft.epochs: 1 -> 2)" in msg
    assert "another output_dir" in msg and "--restart stage1.sft" in msg
    assert json.loads((model / "srt_done.json").read_text()) == done  # nothing was redone...
    assert (out / "stage1" / "manifest.json").read_bytes() == manifest  # ...and nothing claims it was

    # Settings that do not shape a step's outputs, and an unchanged re-run, resume without complaint.
    assert execute(config(tmp_path, tiny_model_dir, **{"sft.epochs": 1, "trainer.log_every_n_steps": 7})) == model
    # A change upstream (the critic's filter) invalidates the critic step and everything after it.
    with pytest.raises(
        DriftError, match=r"stage1.critic finished earlier with other settings \(filter.refinement_vs_response"
    ):
        execute(config(tmp_path, tiny_model_dir, **{"sft.epochs": 1, "filter.refinement_vs_response": ">"}))

    # A --restart that would keep a drifted earlier step in place is refused before it moves anything.
    upstream = config(tmp_path, tiny_model_dir, **{"sft.epochs": 2, "filter.refinement_vs_response": ">"})
    with pytest.raises(DriftError, match=r"stage1.critic finished earlier with other settings"):
        execute(upstream, restart="stage1.sft")
    assert not (out / "superseded").exists() and json.loads((model / "srt_done.json").read_text()) == done

    assert execute(changed, restart="stage1.sft") == model
    redone = json.loads((model / "srt_done.json").read_text())
    assert redone["global_step"] == 2 * done["global_step"]
    superseded = list((out / "superseded").glob("*/stage1/model/srt_done.json"))
    assert len(superseded) == 1 and json.loads(superseded[0].read_text()) == done  # kept, not deleted
    assert (out / "stage1" / "responses.jsonl").exists()  # steps before stage1.sft were kept in place
    assert json.loads((out / "steps.json").read_text())["steps"]["stage1.sft"]["settings"]["sft.epochs"] == 2


def test_drift_is_one_error_line_on_the_command_line(tmp_path, tiny_model_dir):
    cfg_path = write_config(tmp_path, config(tmp_path, tiny_model_dir, **{"sft.epochs": 1}))
    assert run_cli("stage1", cfg_path).returncode == 0
    res = run_cli("stage1", cfg_path, "--set", "sft.epochs=9")
    assert res.returncode == 2 and res.stderr.count("Error:") == 1 and "Traceback" not in res.stderr
    assert "sft.epochs: 1 -> 9" in res.stderr and "--restart stage1.sft" in res.stderr
    res = run_cli("validate", cfg_path, "--set", "sft.epochs=9", "-q")
    assert res.returncode == 2 and "sft.epochs: 1 -> 9" in res.stderr


# -- 4. one run per output directory -----------------------------------------------------------------


def test_second_run_on_the_same_output_dir_stops_before_doing_anything(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, **{"sft.epochs": 400, "sft.lora": None})
    cfg_path = write_config(tmp_path, cfg)
    out = Path(cfg["output_dir"])
    first = start("stage1", cfg_path, tmp_path / "first.log")
    try:
        assert wait_until(lambda: (out / "stage1" / "checkpoints" / "last.ckpt").exists(), first), (
            tmp_path / "first.log"
        ).read_text()[-2000:]
        holder = json.loads((out / ".srt.lock").read_text())
        assert holder["pid"] == first.pid
        responses = (out / "stage1" / "responses.jsonl").read_bytes()
        second = run_cli("stage1", cfg_path, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another run (pid {first.pid}" in second.stderr
        assert (out / "stage1" / "responses.jsonl").read_bytes() == responses
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The dead run left its lock file behind: the next run says so and takes it over.
    third = start("stage1", cfg_path, tmp_path / "third.log")
    try:
        assert wait_until(
            lambda: "taking over a stale lock" in (tmp_path / "third.log").read_text(), third, timeout=120
        ), (tmp_path / "third.log").read_text()[-2000:]
        assert wait_until(lambda: json.loads((out / ".srt.lock").read_text())["pid"] == third.pid, third, timeout=60)
    finally:
        third.send_signal(signal.SIGKILL)
        third.wait()


# -- 5. signals ---------------------------------------------------------------------------------------


def test_sigterm_in_training_saves_a_checkpoint_exits_nonzero_and_resumes(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir, **{"sft.epochs": 200, "trainer.checkpoint_every_n_steps": 1000})
    cfg_path = write_config(tmp_path, cfg)
    step = Path(cfg["output_dir"]) / "stage1"
    proc = start("stage1", cfg_path, tmp_path / "first.log")
    # Training has begun once the metrics file holds a row.
    assert wait_until(lambda: len((step / "logs" / "metrics.csv").read_text().splitlines()) > 2, proc), (
        tmp_path / "first.log"
    ).read_text()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM  # not 0: a scheduler must not record success
    log = (tmp_path / "first.log").read_text()
    assert "Interrupted: interrupted by SIGTERM during stage-1 SFT; checkpoint saved at step" in log, log[-2000:]
    assert "Traceback" not in log
    saved = ckpt_step(step / "checkpoints" / "last.ckpt")  # saved on SIGTERM (periodic saves are every 1000)
    assert saved > 0 and not (step / "model" / "srt_done.json").exists()
    resumed = start("stage1", cfg_path, tmp_path / "second.log")
    assert wait_until(lambda: "resuming training from" in (tmp_path / "second.log").read_text(), resumed, timeout=120)
    resumed.send_signal(signal.SIGINT)  # Ctrl-C: the same clean stop
    assert resumed.wait(timeout=120) == 128 + signal.SIGINT
    assert "interrupted by SIGINT during stage-1 SFT" in (tmp_path / "second.log").read_text()
    assert ckpt_step(step / "checkpoints" / "last.ckpt") > saved


def test_sigterm_during_generation_keeps_every_finished_line(tmp_path, tiny_model_dir):
    cfg = config(
        tmp_path,
        tiny_model_dir,
        **{
            "data.stage1.limit": 64,
            "generation.chunk_size": 2,
            "generation.batch_size": 2,
            "generation.response.max_new_tokens": 48,
        },
    )
    cfg_path = write_config(tmp_path, cfg)
    responses = Path(cfg["output_dir"]) / "stage1" / "responses.jsonl"
    proc = start("stage1", cfg_path, tmp_path / "first.log")
    assert wait_until(lambda: responses.read_bytes().count(b"\n") >= 2, proc), (tmp_path / "first.log").read_text()[
        -2000:
    ]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in (tmp_path / "first.log").read_text()
    raw = responses.read_bytes()
    assert raw.endswith(b"\n") and 2 <= raw.count(b"\n") < 64
    ids = [r.id for r in read_jsonl(responses, FeedbackRecord)]
    assert len(ids) == len(set(ids)) == raw.count(b"\n")


# -- 6-8. exact resume, damaged checkpoints, history ---------------------------------------------------


def _kill_mid_epoch(
    cfg_path: Path, step_dir: Path, log: Path, steps_per_epoch: int, command: str = "stage1", *extra: str
) -> int:
    """Run, SIGKILL once a checkpoint exists that is not at an epoch boundary; return its step."""
    proc = start(command, cfg_path, log, *extra)
    last = step_dir / "checkpoints" / "last.ckpt"
    try:
        hit = wait_until(
            lambda: last.exists() and ckpt_step(last) % steps_per_epoch not in (0,) and ckpt_step(last) > 2,
            proc,
            poll=0.01,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert hit, log.read_text()[-3000:]
    return ckpt_step(last)


def test_sigkill_mid_epoch_in_sft_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    """8 records, micro-batch 2 -> 4 steps an epoch; LoRA dropout 0.3, so the RNG streams matter too."""
    base = config(tmp_path / "a", tiny_model_dir)
    reference = execute(base)
    cfg = config(tmp_path / "b", tiny_model_dir)
    cfg_path = write_config(tmp_path, cfg)
    step_dir = Path(cfg["output_dir"]) / "stage1"
    killed_at = _kill_mid_epoch(cfg_path, step_dir, tmp_path / "first.log", steps_per_epoch=4)
    # A LoRA checkpoint holds what is trained (and the optimizer state), not the frozen base.
    ckpt = torch.load(step_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["srt_trainable_only"] and all(".lora_" in k for k in ckpt["state_dict"])
    rows_before = list(csv.DictReader((step_dir / "logs" / "metrics.csv").open()))
    res = run_cli("stage1", cfg_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming training from" in res.stderr
    assert max_diff(weights(reference), weights(step_dir / "model")) <= 1e-6, f"killed at step {killed_at}"
    assert max_diff(weights(reference.parent / "adapter"), weights(step_dir / "adapter")) <= 1e-6
    # 8. The metrics history survives the resume: the first attempt's rows are all still there.
    rows = list(csv.DictReader((step_dir / "logs" / "metrics.csv").open()))
    assert rows[: len(rows_before)] == rows_before
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == list(range(12))


def test_sigkill_mid_epoch_in_dpo_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    base = config(tmp_path / "a", tiny_model_dir)
    reference = execute(base, "run")
    cfg = config(tmp_path / "b", tiny_model_dir)
    cfg_path = write_config(tmp_path, cfg)
    execute(cfg, "stage1")
    pairs = sum(1 for _ in (Path(base["output_dir"]) / "stage2" / "round1" / "pairs.jsonl").open())
    assert pairs >= 6, "the tiny run needs pairs for a multi-step epoch"
    step_dir = Path(cfg["output_dir"]) / "stage2" / "round1"
    _kill_mid_epoch(cfg_path, step_dir, tmp_path / "first.log", steps_per_epoch=(pairs + 1) // 2, command="run")
    res = run_cli("run", cfg_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming training from" in res.stderr and "stage 1 already finished" in res.stderr
    assert max_diff(weights(reference), weights(step_dir / "model")) <= 1e-6


def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_model_dir):
    base = config(tmp_path / "a", tiny_model_dir)
    reference = execute(base)
    cfg = config(tmp_path / "b", tiny_model_dir)
    cfg_path = write_config(tmp_path, cfg)
    step_dir = Path(cfg["output_dir"]) / "stage1"
    _kill_mid_epoch(cfg_path, step_dir, tmp_path / "first.log", steps_per_epoch=4)
    ckpts = step_dir / "checkpoints"
    assert (ckpts / "last.prev.ckpt").exists()  # the one before is kept
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # a save cut short
    res = run_cli("stage1", cfg_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "checkpoints/last.ckpt is damaged" in res.stderr and "resuming from the earlier checkpoint" in res.stderr
    assert (ckpts / "last.ckpt.damaged").exists()  # kept for a post-mortem
    assert max_diff(weights(reference), weights(step_dir / "model")) <= 1e-6  # the earlier one resumes exactly too


def test_no_whole_checkpoint_left_is_one_error_line(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    cfg_path = write_config(tmp_path, cfg)
    step_dir = Path(cfg["output_dir"]) / "stage1"
    _kill_mid_epoch(cfg_path, step_dir, tmp_path / "first.log", steps_per_epoch=4)
    for name in ("last.ckpt", "last.prev.ckpt"):
        (step_dir / "checkpoints" / name).write_bytes(b"PK\x03\x04 garbage")
    res = run_cli("stage1", cfg_path)
    assert res.returncode == 2 and res.stderr.count("Error:") == 1 and "Traceback" not in res.stderr
    assert "no usable checkpoint to resume from" in res.stderr and "last.ckpt" in res.stderr
    assert f"Delete {step_dir / 'checkpoints'}" in res.stderr


def test_a_cut_off_last_response_is_regenerated_as_a_fresh_run_draws_it(tmp_path, tiny_model_dir):
    """The sample of each instruction comes from its own random stream, keyed by its id."""
    fresh = config(tmp_path / "a", tiny_model_dir, **{"sft.epochs": 1})
    execute(fresh)
    lines = (Path(fresh["output_dir"]) / "stage1" / "responses.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 8
    cfg = config(tmp_path / "b", tiny_model_dir, **{"sft.epochs": 1})
    target = Path(cfg["output_dir"]) / "stage1" / "responses.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"".join(lines[:5]) + lines[5][:40])  # killed while writing line 6
    execute(cfg)
    assert target.read_bytes().splitlines(keepends=True) == lines


# -- 8. cost accounting across an interrupted attempt ----------------------------------------------------


KEY_ENV = "SRT_TEST_GUARANTEE_KEY"
SECRET = "sk-guarantee-7d1e2c3b4a5968778695a4b3-NEVER-WRITE"


def _openai_critic(server, tmp_path: Path, **extra) -> dict:
    return {
        "name": "openai",
        "model": "test-critic",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "cache_dir": str(tmp_path / "critic_cache"),
        "max_concurrency": 1,
        "max_retries": 2,
        "timeout_s": 10,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.02,
        "price_per_1k_prompt": 1.0,
        "price_per_1k_completion": 2.0,
        "progress": False,
        **extra,
    }


def test_calls_paid_by_an_interrupted_attempt_are_counted_not_repaid(tmp_path, tiny_model_dir):
    from chat_server import ChatServer
    from test_openai_critic import scripted_critic

    env = {**ENV, KEY_ENV: SECRET}
    with ChatServer(responder=scripted_critic) as server:
        server.handle_delay_s = 0.3
        cfg = config(
            tmp_path,
            tiny_model_dir,
            **{"critic": _openai_critic(server, tmp_path), "generation.chunk_size": 64, "sft.epochs": 1},
        )
        cfg_path = write_config(tmp_path, cfg)
        step = Path(cfg["output_dir"]) / "stage1"
        first = start("stage1", cfg_path, tmp_path / "first.log", env=env)
        try:
            assert wait_until(lambda: server.request_count >= 3, first), (tmp_path / "first.log").read_text()[-2000:]
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        paid_before = server.request_count
        assert not (step / "critic_calls.jsonl").exists() or not (step / "critic_calls.jsonl").read_bytes().strip()
        server.handle_delay_s = 0.0
        res = run_cli("stage1", cfg_path, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    calls = len(list(read_jsonl(step / "critic_calls.jsonl", CriticCall)))
    # Every call was paid once; only the one in flight when SIGKILL struck can be asked twice (its
    # answer never arrived, so nothing could keep it).
    prompts = [json.dumps(r.body["messages"]) for r in server.requests]
    assert len(prompts) - len(set(prompts)) <= 1 and len(set(prompts)) == calls
    usage = json.loads((step / "report.json").read_text())["usage"]
    assert usage["paid_by_an_interrupted_attempt"] >= paid_before - 1  # the last one may have been cut off
    entries = [json.loads(p.read_text()) for p in (tmp_path / "critic_cache").glob("??/*.json")]
    assert len(entries) == calls
    assert usage["cost_usd"] == pytest.approx(sum(e["cost_usd"] for e in entries), rel=1e-6) and usage["cost_usd"] > 0


# -- 12. secrets ------------------------------------------------------------------------------------------


def test_the_api_key_reaches_no_file_and_no_log(tmp_path, tiny_model_dir):
    from chat_server import ChatServer, Fault
    from test_openai_critic import scripted_critic

    env = {**ENV, KEY_ENV: SECRET, "SRT_LOG_LEVEL": "DEBUG"}
    with ChatServer(responder=scripted_critic) as server:
        # A server that echoes the key back: in an error (401, not retried) and in a completion's text.
        server.inject(Fault.echo_key(401), Fault.echo_key_text())
        cfg = config(tmp_path, tiny_model_dir, **{"critic": _openai_critic(server, tmp_path), "sft.epochs": 1})
        res = run_cli("stage1", write_config(tmp_path, cfg), env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.requests[0].authorization == f"Bearer {SECRET}"  # the key was really used
    calls = (Path(cfg["output_dir"]) / "stage1" / "critic_calls.jsonl").read_text()
    assert "invalid API key: Bearer <redacted>" in calls and "Your key is Bearer <redacted>" in calls, calls
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == [] and SECRET not in res.stderr + res.stdout
