"""Conversational instructions (TRL's `messages` format): the last user turn is the instruction, the
earlier turns (a system message too) are context for generation, the critic and training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srt.config import InstructionSource, RunConfig
from srt.errors import RecordError
from srt.pipeline.instructions import load_instructions

WORDS = Path(__file__).resolve().parents[1] / "configs" / "data" / "word_problems_stage1.jsonl"


def conversations(path: Path, n: int = 4) -> Path:
    rows = []
    for line in WORDS.read_text().splitlines()[:n]:
        item = json.loads(line)
        rows.append(
            {
                "uid": item["id"],
                "gold": item["answer"],
                "messages": [
                    {"role": "system", "content": "You are a patient maths tutor."},
                    {"role": "user", "content": "Hi, can you help with homework?"},
                    {"role": "assistant", "content": "Of course. What is the problem?"},
                    {"role": "user", "content": item["instruction"]},
                    {"role": "assistant", "content": "an answer in the source data, not kept"},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_messages_split_into_instruction_and_context(tmp_path):
    src = InstructionSource(
        path=str(conversations(tmp_path / "c.jsonl")), fields={"messages": "messages", "id": "uid", "reference": "gold"}
    )
    first = load_instructions(src)[0]
    assert first.instruction == json.loads(WORDS.read_text().splitlines()[0])["instruction"]
    assert [(m.role, m.content) for m in first.context] == [
        ("system", "You are a patient maths tutor."),
        ("user", "Hi, can you help with homework?"),
        ("assistant", "Of course. What is the problem?"),
    ]


@pytest.mark.parametrize(
    "messages, reason",
    [
        ("just text", "expected a non-empty list"),
        ([{"role": "assistant", "content": "hi"}], "the conversation has no user turn"),
        ([{"role": "robot", "content": "hi"}], "not a list of {role, content} messages"),
    ],
)
def test_bad_conversations_name_file_and_line(tmp_path, messages, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "ok"}]}) + "\n" + json.dumps({"messages": messages}) + "\n"
    )
    with pytest.raises(RecordError, match=rf"bad\.jsonl:2: field 'messages': {reason}"):
        load_instructions(InstructionSource(path=str(path), fields={"messages": "messages"}))


@pytest.mark.slow
def test_context_reaches_generation_critic_and_training(tmp_path, tiny_model_dir, tiny_tokenizer):
    from srt.config import SFTConfig
    from srt.critic_template import render_critic_prompt
    from srt.data import SFTDataModule
    from srt.pipeline.run import execute
    from srt.records import FeedbackRecord, read_jsonl

    cfg = RunConfig.model_validate(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {"path": str(tiny_model_dir), "dtype": "float32", "system_prompt": "unused: the data has its own"},
            "data": {
                "stage1": {
                    "path": str(conversations(tmp_path / "c.jsonl")),
                    "fields": {"messages": "messages", "id": "uid", "reference": "gold"},
                }
            },
            "generation": {"batch_size": 4, "response": {"max_new_tokens": 8}},
            "sft": {"epochs": 1, "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
            "trainer": {"accelerator": "cpu", "precision": "32-true"},
        }
    )
    execute(cfg, "stage1")
    records = list(read_jsonl(Path(cfg.output_dir) / "stage1" / "records.jsonl", FeedbackRecord))
    assert len(records) == 4 and all(len(r.context) == 3 for r in records)
    # Training sees the conversation: system message from the data (not model.system_prompt), the
    # earlier exchange, then the instruction; the loss starts after the prompt.
    data = SFTDataModule(
        tiny_tokenizer, SFTConfig(max_length=512), system_prompt=cfg.model.system_prompt, train_records=records
    )
    data.setup()
    item = data.datasets["train"][0]
    prompt = tiny_tokenizer.decode(item["input_ids"][item["labels"] == -100])
    assert "You are a patient maths tutor." in prompt and "What is the problem?" in prompt
    assert "unused" not in prompt and prompt.index("homework") < prompt.index(records[0].instruction[:20])
    # A critic is shown the earlier turns above the last user message.
    text = render_critic_prompt(
        records[0].instruction, records[0].response, [m.model_dump() for m in records[0].context]
    )
    assert "(The conversation so far)\nsystem: You are a patient maths tutor." in text
