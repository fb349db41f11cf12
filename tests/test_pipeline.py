"""Stage-1 pipeline on the tiny model: filters and counters, outputs, manifest, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srt.config import RunConfig, apply_overrides
from srt.critic_template import render_critique
from srt.pipeline import feedback as fb
from srt.records import CriticInfo, FeedbackRecord, read_jsonl

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data" / "word_problems_stage1.jsonl"


def tiny_config(tmp_path, model_dir, **extra) -> dict:
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {
            "stage1": {
                "path": str(DATA),
                "fields": {"id": "id", "instruction": "instruction", "reference": "answer"},
                "limit": 8,
            }
        },
        "generation": {"batch_size": 4, "chunk_size": 2, "response": {"temperature": 0.7, "max_new_tokens": 8}},
        "critic": {"name": "reference"},
        "sft": {"epochs": 2, "micro_batch_size": 2, "global_batch_size": 4, "max_length": 512, "optim": {"lr": 1e-3}},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "checkpoint_every_n_steps": 1},
    }
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in extra.items()])


# -- filters ----------------------------------------------------------------------------------------

INFO = CriticInfo(name="test", template_version="v", template_hash="h")


def rec(i: str) -> FeedbackRecord:
    return FeedbackRecord(id=i, instruction=f"q{i}", response=f"r{i}", stage=1)


def call(i, mode, text=None, error=None):
    return {(i, mode): fb.CriticCall(id=i, mode=mode, text=text, error=error)}


def test_filters_count_every_outcome():
    records = [rec(str(k)) for k in range(6)]
    calls = {}
    calls |= call("0", "critique", render_critique("w", "s", 4, "better")) | call(
        "0", "score", "Overall Score: [[6]]"
    )  # kept
    calls |= call("1", "critique", render_critique("w", "s", 4, "same")) | call(
        "1", "score", "Overall Score: [[4]]"
    )  # tie
    calls |= call("2", "critique", render_critique("w", "s", 7, "worse")) | call(
        "2", "score", "Overall Score: [[3]]"
    )  # worse
    calls |= call("3", "critique", "no structure at all")  # parse failure
    calls |= call("4", "critique", error="HTTP 500 after 6 retries")  # critic error
    calls |= call("5", "critique", render_critique("w", "s", 2, "x")) | call(
        "5", "score", "Overall Score: [[11]]"
    )  # bad rescore

    ge = fb.build_records(records, calls, INFO, fb.FilterRule(">="))
    assert [r.id for r in ge.kept] == ["0", "1"]
    assert ge.counters["refinement_not_better"] == 1 and ge.counters["parse_failure"] == 1
    assert ge.counters["critic_error"] == 1 and ge.counters["rescore_parse_failure"] == 1
    assert ge.counters["total"] == 6 and len(ge.rejects) == 4  # nothing dropped silently
    assert {r["reason"] for r in ge.rejects} >= {
        "parse_failure:missing_weaknesses",
        "critic_error",
        "refinement_not_better",
    }
    assert sorted(ge.response_scores) == [2, 4, 4, 7] and sorted(ge.refinement_scores) == [3, 4, 6]
    kept = ge.kept[0]
    assert kept.feedback.score == 4 and kept.refinement == "better" and kept.refinement_score == 6

    gt = fb.build_records(records, calls, INFO, fb.FilterRule(">"))
    assert [r.id for r in gt.kept] == ["0"] and gt.counters["refinement_not_better"] == 2

    minimum = fb.build_records(records, calls, INFO, fb.FilterRule(">=", min_refinement_score=5))
    assert [r.id for r in minimum.kept] == ["0"] and minimum.counters["refinement_below_min"] == 1


# -- end to end ---------------------------------------------------------------------------------------


def test_stage1_end_to_end(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from srt.pipeline.stage1 import run_stage1

    cfg = RunConfig.model_validate(tiny_config(tmp_path, tiny_model_dir))
    model_dir = run_stage1(cfg)
    out = Path(cfg.output_dir) / "stage1"
    kept = list(read_jsonl(out / "records.jsonl", FeedbackRecord))
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    assert report["counters"]["total"] == 8 == len(kept) + len(rejects)
    # The reference critic gives the gold solution the top score, so every refinement is kept.
    assert all(r.refinement_score == 10 and r.feedback.score < 10 and "####" not in r.refinement for r in kept)
    assert sum(report["scores"]["refinement"]["histogram"].values()) == len(kept)
    assert (out / "scores.png").stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["torch"] and manifest["critic_template"]["hash"]
    assert manifest["data"]["instructions"]["sha256"] and manifest["model"]["revision"].startswith("sha256:")
    calls = list(read_jsonl(out / "critic_calls.jsonl", fb.CriticCall))
    assert len(calls) == 16  # one critique and one separate re-score per response
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.num_parameters() > 0 and (model_dir / "srt_done.json").is_file()
    # The end-of-run summary: where the model is, what was kept, how training ended, time and critic calls.
    summary = (Path(cfg.output_dir) / "summary.md").read_text()
    assert f"| stage 1 | model | `{model_dir}` |" in summary
    assert f"| stage 1 | 8 | {len(kept)} |" in summary and "| stage 1 | 4 | train/loss " in summary
    assert "| stage1.sft | done |" in summary and "| stage 1 | 16 |" in summary  # 16 critic calls
    report_md = (out / "report.md").read_text()
    assert "## Critic calls and cost" in report_md and "| calls | 16 |" in report_md
    # A second run finds everything done and redoes nothing.
    before = (out / "critic_calls.jsonl").read_bytes()
    assert run_stage1(cfg) == model_dir and (out / "critic_calls.jsonl").read_bytes() == before


def _run_cli(cfg_path: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SRT_LOG_LEVEL": "INFO"}
    code = "import sys; from srt.cli.train import main; sys.argv=['srt-train', *sys.argv[1:]]; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "stage1", "--config", str(cfg_path)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize("kill_at", ["generation", "training"])
def test_stage1_resumes_after_kill(tmp_path, tiny_model_dir, kill_at):
    import yaml

    cfg = tiny_config(tmp_path, tiny_model_dir, **{"sft.epochs": 4})
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = Path(cfg["output_dir"]) / "stage1"
    proc = _run_cli(cfg_path, tmp_path / "first.log")
    if kill_at == "generation":
        hit = _wait_for(lambda: _lines(out / "responses.jsonl") >= 2, proc)
    else:
        hit = _wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert hit, (tmp_path / "first.log").read_text()[-3000:]
    assert not (out / "model" / "srt_done.json").exists()
    partial = (out / "responses.jsonl").read_bytes().splitlines()[:2]

    second = _run_cli(cfg_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    responses = (out / "responses.jsonl").read_bytes().splitlines()
    ids = [json.loads(line)["id"] for line in responses]
    assert len(ids) == len(set(ids)) == 8  # nothing generated twice
    assert responses[:2] == partial  # finished generations were kept, not redone
    calls = list(read_jsonl(out / "critic_calls.jsonl", fb.CriticCall))
    assert len({(c.id, c.mode) for c in calls}) == len(calls) == 16
    if kill_at == "training":
        assert "resuming training from" in log
    done = json.loads((out / "model" / "srt_done.json").read_text())
    # 8 records, micro-batch 2, global batch 4 -> 2 optimizer steps per epoch, 4 epochs.
    assert done["global_step"] == 8


def test_run_both_stages_resumes_after_kill_in_stage2(tmp_path, tiny_model_dir):
    """`srt-train run`: killed during stage-2 generation, the re-run skips stage 1 and finishes."""
    import yaml

    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["data"]["stage2"] = {**cfg["data"]["stage1"], "offset": 8, "limit": 8}
    cfg["stage2"] = {"critic": {"name": "reference"}}
    cfg["dpo"] = {"beta": 0.1, "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512, "optim": {"lr": 1e-3}}
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = Path(cfg["output_dir"])
    responses2 = run_dir / "stage2" / "round1" / "responses.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = "import sys; from srt.cli.train import main; sys.argv=['srt-train', *sys.argv[1:]]; main()"
    cmd = [sys.executable, "-c", code, "run", "--config", str(cfg_path)]
    first = subprocess.Popen(cmd, stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT, env=env)
    hit = _wait_for(lambda: _lines(responses2) >= 2, first, timeout=400)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert hit, (tmp_path / "first.log").read_text()[-3000:]
    stage1_done = (run_dir / "stage1" / "model" / "srt_done.json").read_bytes()

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage 1 already finished" in second.stderr
    assert (run_dir / "stage1" / "model" / "srt_done.json").read_bytes() == stage1_done
    ids = [json.loads(line)["id"] for line in responses2.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 8
    assert json.loads((run_dir / "stage2" / "round1" / "model" / "srt_done.json").read_text())["stage"] == 2
    assert json.loads((run_dir / "manifest.json").read_text())["srt_command"] == "run"


def test_exported_models_carry_model_cards(tmp_path, tiny_model_dir):
    """Each exported folder gets a README.md card; an adapter names its base model, not a cache path."""
    import json as _json

    from srt.pipeline.run import execute

    cfg = RunConfig.model_validate(tiny_config(tmp_path, tiny_model_dir, **{"sft.lora": {"r": 4, "alpha": 8}}))
    model_dir = execute(cfg, "stage1")
    adapter_dir = model_dir.parent / "adapter"
    for folder in (model_dir, adapter_dir):
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nbase_model: ") and f"`{tiny_model_dir}`" in card
        assert "| critic | `reference` |" in card and "parse_srt_output(text).answer" in card
        assert "arXiv:2406.07168" in card and "| `sft.lora` |" in card and "8 critic-feedback examples" in card
    assert "library_name: peft" in (adapter_dir / "README.md").read_text()
    assert _json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )


def test_original_model_id_names_what_the_user_configured(tmp_path):
    from srt.model_card import original_model_id, set_adapter_base

    assert original_model_id("smollm2-135m-instruct", "/root/.cache/srt/models/x") == "smollm2-135m-instruct"
    assert original_model_id(str(tmp_path), str(tmp_path)) == str(tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "/cache/x", "r": 4}')
    set_adapter_base(tmp_path, "org/model")
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": "org/model",
        "r": 4,
    }
