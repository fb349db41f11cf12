"""Stage 2 end to end on the tiny model: self-feedback -> preference pairs -> DPO, rounds, resume.

The stage-1 model is made the honest way: the stage-1 SFT recipe (srt.pipeline.train_sft) trains
the tiny Llama on feedback records in which a wrong answer gets ``Overall Score: [[3]]`` and the
refinement "The answer is 5." gets ``[[8]]``. Stage 2 then has to run the real chain: sample a
response, critique it with the ``self`` critic, re-score the refinement in a separate call, keep
the pairs where the refinement wins, and train DPO on them.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from srt.config import RunConfig
from srt.critic_template import render_feedback
from srt.records import Feedback, FeedbackRecord, PreferencePair, read_jsonl, write_jsonl_atomic

GOOD = "The answer is 5."
WRONG = ["I guess 12", "maybe 7 or so", "it is 30", "no idea, 2", "41 apples", "the total is 9"]


def stage1_records() -> list[FeedbackRecord]:
    records = []
    for i in range(12):
        wrong = i % 2 == 0
        response = WRONG[i % len(WRONG)] if wrong else GOOD
        score = 3 if wrong else 8
        weak, sugg = (
            ("- The final answer is wrong.", "- Recompute the sum.") if wrong else ("- Terse.", "- Show the steps.")
        )
        records.append(
            FeedbackRecord(
                id=f"s1-{i}",
                instruction=f"Question {i}: what is {i % 3} + {5 - i % 3}?",
                response=response,
                feedback=Feedback(
                    weaknesses=weak, suggestions=sugg, score=score, raw=render_feedback(weak, sugg, score)
                ),
                refinement=GOOD,
                refinement_score=8,
                stage=1,
            )
        )
    return records


def write_instructions(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "instruction": f"Question {i}: what is {i % 3} + {5 - i % 3}?"}) + "\n"
            for i in range(n)
        )
    )
    return path


@pytest.fixture(scope="module")
def stage1_model(tmp_path_factory, tiny_model_dir):
    from srt.pipeline.train_sft import train_sft

    root = tmp_path_factory.mktemp("stage1")
    records = root / "records.jsonl"
    write_jsonl_atomic(records, stage1_records())
    cfg = RunConfig.model_validate(
        {
            "output_dir": str(root),
            "model": {"path": str(tiny_model_dir), "dtype": "float32"},
            "sft": {
                "epochs": 60,
                "micro_batch_size": 4,
                "global_batch_size": 4,
                "max_length": 256,
                "optim": {"lr": 1e-2, "warmup_ratio": 0.05},
            },
            "trainer": {
                "accelerator": "cpu",
                "log_every_n_steps": 50,
                "checkpoint_every_n_steps": 1000,
                "gradient_clip_val": 1.0,
            },
        }
    )
    return train_sft(cfg, base_model=str(tiny_model_dir), records_path=records, step_dir=root)


def stage2_config(tmp_path: Path, rounds: int = 1, **dpo) -> dict:
    return {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {"path": "unused-in-stage2", "dtype": "float32"},
        "data": {
            "stage2": {
                "path": str(write_instructions(tmp_path / "q.jsonl", 8 * rounds)),
                "fields": {"id": "id", "instruction": "instruction"},
            }
        },
        "generation": {
            "batch_size": 8,
            "chunk_size": 4,
            "response": {"temperature": 0.7, "max_new_tokens": 10},
            "critique": {"temperature": 0.0, "max_new_tokens": 80},
        },
        "dpo": {
            "beta": 0.1,
            "micro_batch_size": 2,
            "global_batch_size": 2,
            "epochs": 2,
            "max_length": 256,
            "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
            **dpo,
        },
        "stage2": {"rounds": rounds, "instructions_per_round": 8, "refinement_vs_response": ">"},
        "trainer": {"accelerator": "cpu", "log_every_n_steps": 1, "checkpoint_every_n_steps": 1},
    }


def test_stage2_pairs_dpo_and_rounds(tmp_path, stage1_model):
    from transformers import AutoModelForCausalLM

    from srt.pipeline.stage2 import NO_PAIRS_FILE, run_stage2

    cfg = RunConfig.model_validate(stage2_config(tmp_path, rounds=2))
    final = run_stage2(cfg, start_model=str(stage1_model))
    steps = [Path(cfg.output_dir) / "stage2" / f"round{r}" for r in (1, 2)]
    reports = [json.loads((s / "report.json").read_text()) for s in steps]

    # Round 1: the stage-1 model's wrong answers lose to its refinements -> pairs -> DPO.
    pairs = list(read_jsonl(steps[0] / "pairs.jsonl", PreferencePair))
    assert reports[0]["pairs"] == len(pairs) > 0, reports[0]
    for p in pairs:  # chosen = refinement, rejected = initial response, the refinement won strictly
        assert p.chosen.strip() == GOOD and p.chosen_score > p.rejected_score and p.round == 1
        assert p.critic.name == "self" and p.source_id is not None and p.rejected.strip() != GOOD
    done = json.loads((steps[0] / "model" / "srt_done.json").read_text())
    assert done["reference"] == "precomputed" and done["global_step"] > 0
    header = (steps[0] / "logs" / "metrics.csv").read_text().splitlines()[0]
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert name in header

    # The SRT model writes its whole chain in one turn; the initial response stops at its feedback header.
    responses = list(read_jsonl(steps[0] / "responses.jsonl", FeedbackRecord))
    assert len(responses) == 8 and not any("### Feedback" in r.response for r in responses)

    # Round 2 starts from round 1's model, on fresh instructions, and its own answers got better.
    manifest = json.loads((steps[1] / "manifest.json").read_text())
    assert manifest["round"] == 2 and manifest["instructions"]["offset"] == 8
    assert manifest["model"]["start"] == str(steps[0] / "model")
    mean = [r["scores"]["response"]["mean"] for r in reports]
    assert mean[1] > mean[0], mean
    if (steps[1] / NO_PAIRS_FILE).exists():  # nothing left to learn: DPO skipped, model kept
        assert reports[1]["pairs"] == 0 and final == steps[0] / "model"
    else:
        assert final == steps[1] / "model" and (final / "srt_done.json").exists()
    assert AutoModelForCausalLM.from_pretrained(final).num_parameters() > 0


def test_stage2_resumes_after_kill_during_dpo(tmp_path, stage1_model):
    cfg = stage2_config(tmp_path, rounds=1, epochs=3)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    step = Path(cfg["output_dir"]) / "stage2" / "round1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = "import sys; from srt.cli.train import main; sys.argv=['srt-train', *sys.argv[1:]]; main()"
    cmd = [sys.executable, "-c", code, "stage2", "--config", str(cfg_path), "--model", str(stage1_model)]
    first = subprocess.Popen(cmd, stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not (step / "checkpoints" / "last.ckpt").exists():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (step / "checkpoints" / "last.ckpt").exists(), (tmp_path / "first.log").read_text()[-3000:]
    pairs_before = (step / "pairs.jsonl").read_bytes()
    calls_before = (step / "critic_calls.jsonl").read_bytes()

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming training from" in second.stderr
    # Self-feedback was not redone; the reference log-probs came from the on-disk cache.
    assert (step / "pairs.jsonl").read_bytes() == pairs_before
    assert (step / "critic_calls.jsonl").read_bytes() == calls_before
    assert len(list((step / "reference_logps").glob("*.pt"))) == 1
    assert json.loads((step / "model" / "srt_done.json").read_text())["global_step"] > 0
