"""Instructions in: JSONL, JSON, a local Hugging Face dataset; field mapping; clear errors."""

import json

import pytest

from srt.config import InstructionSource, load_config
from srt.errors import ConfigError, RecordError
from srt.pipeline.instructions import load_instructions

ROWS = [
    {"uid": f"u{i}", "prompt": f"Question {i}?", "gold": str(i), "extra": "ctx" if i == 1 else ""} for i in range(5)
]
MAPPING = {"instruction": "prompt", "id": "uid", "reference": "gold", "input": "extra"}


def check(records):
    assert [r.id for r in records] == [f"u{i}" for i in range(5)]
    assert records[1].instruction == "Question 1?\n\nctx" and records[2].instruction == "Question 2?"
    assert records[3].reference == "3"


def test_jsonl_json_and_local_hf_dataset(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # a blank line is fine
    check(load_instructions(InstructionSource(path=str(jsonl), fields=MAPPING)))

    js = tmp_path / "q.json"
    js.write_text(json.dumps({"train": ROWS}))
    check(load_instructions(InstructionSource(path=str(js), fields=MAPPING)))

    import datasets

    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    check(load_instructions(InstructionSource(path=str(folder), format="hf", fields=MAPPING)))


def test_offset_and_limit_slice(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    got = load_instructions(InstructionSource(path=str(path), fields=MAPPING, offset=1, limit=2))
    assert [r.id for r in got] == ["u1", "u2"]


def test_ids_are_stable_when_the_source_has_none(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"instruction": r["prompt"]}) + "\n" for r in ROWS))
    a = load_instructions(InstructionSource(path=str(path)))
    b = load_instructions(InstructionSource(path=str(path)))
    assert [r.id for r in a] == [r.id for r in b] and len({r.id for r in a}) == 5


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"instruction": "ok"}\n{"instruction": \n', "q.jsonl:2: invalid JSON"),
        ('{"instruction": "ok"}\n{"prompt": "x"}\n', "q.jsonl:2: missing field 'instruction'"),
        ('{"instruction": "  "}\n', "q.jsonl:1: instruction must be a non-empty string"),
        ('["a"]\n', "q.jsonl:1: expected a JSON object"),
        ('{"instruction": "a", "id": 1}\n{"instruction": "b", "id": 1}\n', "q.jsonl:2: duplicate id '1'"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, expected):
    path = tmp_path / "q.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_instructions(InstructionSource(path=str(path), fields={"instruction": "instruction", "id": "id"}))


def test_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "\xff\xfe"}\n')
    with pytest.raises(RecordError, match="q.jsonl:2: invalid UTF-8"):
        load_instructions(InstructionSource(path=str(path)))
    with pytest.raises(ConfigError, match="not found"):
        load_instructions(InstructionSource(path=str(tmp_path / "nope.jsonl")))


def test_unknown_field_mapping_key_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  stage1:\n    path: q.jsonl\n    fields: {question: prompt}\n")
    with pytest.raises(ConfigError, match="unknown field mapping keys"):
        load_config(cfg)


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    run_configs = [c for c in configs if not c.name.startswith(("eval", "demo_eval"))]
    assert run_configs
    for path in run_configs:
        cfg = load_config(path)
        if cfg.trainer.strategy in ("fsdp", "fsdp2"):  # the strategy section is validated when built
            from srt.pipeline.training import build_strategy

            assert build_strategy(cfg.trainer) is not None
