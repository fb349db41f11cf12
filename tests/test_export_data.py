"""`srt-train export RUN --format ...`: TRL-ready datasets, checked by loading them with `datasets`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from srt.config import RunConfig

DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "word_problems_stage1.jsonl"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    from srt.pipeline.run import execute

    root = tmp_path_factory.mktemp("export-run")
    fields = {"id": "id", "instruction": "instruction", "reference": "answer"}
    cfg = RunConfig.model_validate(
        {
            "output_dir": str(root / "run"),
            "model": {"path": str(tiny_model_dir), "dtype": "float32", "system_prompt": "Be careful."},
            "data": {
                "stage1": {"path": str(DATA), "fields": fields, "limit": 4},
                "stage2": {"path": str(DATA), "fields": fields, "offset": 4, "limit": 4},
            },
            "generation": {"batch_size": 4, "response": {"max_new_tokens": 8}},
            "sft": {"epochs": 1, "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
            "dpo": {"micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
            "stage2": {"critic": {"name": "reference"}, "refinement_vs_response": ">="},
            "trainer": {"accelerator": "cpu", "precision": "32-true"},
        }
    )
    execute(cfg, "run")
    return Path(cfg.output_dir)


def test_exports_load_with_datasets_in_trl_shapes(run_dir, tiny_tokenizer, monkeypatch, capsys):
    import datasets

    from srt.cli.train import main
    from srt.critic_template import FEEDBACK_HEADER, REFINEMENT_HEADER

    for fmt in ("sft-messages", "prompt-completion", "preference"):
        monkeypatch.setattr(sys, "argv", ["srt-train", "export", str(run_dir), "--format", fmt])
        main()
        assert "rows:" in capsys.readouterr().out
    out = run_dir / "export"
    records = [json.loads(line) for line in (run_dir / "stage1" / "records.jsonl").read_text().splitlines()]

    messages = datasets.load_from_disk(str(out / "sft-messages"))
    assert len(messages) == len(records) == 4
    first = messages[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"] and first[0]["content"] == "Be careful."
    assert first[1]["content"] == records[0]["instruction"]
    turn = first[2]["content"]
    assert turn.startswith(records[0]["response"]) and FEEDBACK_HEADER in turn and REFINEMENT_HEADER in turn
    assert turn.endswith(records[0]["refinement"])

    pc = datasets.load_dataset("json", data_files=str(out / "prompt-completion.jsonl"), split="train")
    assert pc[0]["prompt"] == tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be careful."}, {"role": "user", "content": records[0]["instruction"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert pc[0]["completion"] == turn + tiny_tokenizer.eos_token  # the SRT turn and its end of turn

    pairs = datasets.load_from_disk(str(out / "preference"))
    raw = [json.loads(line) for line in (run_dir / "stage2" / "round1" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == len(raw) > 0 and set(pairs.column_names) >= {"prompt", "chosen", "rejected"}
    assert pairs[0]["chosen"] == raw[0]["chosen"] and pairs[0]["rejected"] == raw[0]["rejected"]
    assert pairs[0]["prompt"].endswith("<|assistant|>\n") and raw[0]["prompt"] in pairs[0]["prompt"]
