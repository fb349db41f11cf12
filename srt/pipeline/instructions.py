"""Instructions in: JSON/JSONL files or a Hugging Face dataset (hub id or local files), with a field mapping."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from srt.config import InstructionSource
from srt.errors import ConfigError, RecordError
from srt.records import InstructionRecord


def _format(src: InstructionSource) -> str:
    if src.format != "auto":
        return src.format
    suffix = Path(src.path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    return "hf"


def _rows(src: InstructionSource):
    fmt = _format(src)
    path = Path(src.path)
    if fmt in ("jsonl", "json") and not path.is_file():
        raise ConfigError(f"instructions file not found: {path}")
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    yield lineno, json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise RecordError(f"{path}:{lineno}: invalid UTF-8") from None
                except json.JSONDecodeError as exc:
                    raise RecordError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
    elif fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path}: invalid JSON file ({exc})") from None
        if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
            data = data.get(src.split) or data.get("data") or data.get("instances")
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of objects (or an object holding one under {src.split!r})")
        yield from enumerate(data, 1)
    else:
        import datasets  # local folder saved with save_to_disk, local files, or a hub id

        if Path(src.path).is_dir() and (Path(src.path) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(src.path)
            ds = ds[src.split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(src.path, src.name, split=src.split)
        yield from enumerate(ds, 1)


def load_instructions(src: InstructionSource) -> list[InstructionRecord]:
    """Read, map fields, validate (non-empty instruction) and slice (offset/limit)."""
    m = src.fields
    out: list[InstructionRecord] = []
    seen: set[str] = set()
    for n, row in _rows(src):
        if n <= src.offset:
            continue
        if src.limit is not None and len(out) >= src.limit:
            break
        where = f"{src.path}:{n}"
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
        if m["instruction"] not in row:
            raise RecordError(f"{where}: missing field {m['instruction']!r} (mapped to instruction; see data.*.fields)")
        instruction = row[m["instruction"]]
        if not isinstance(instruction, str) or not instruction.strip():
            raise RecordError(f"{where}: instruction must be a non-empty string")
        if "input" in m and row.get(m["input"]):  # Alpaca-style extra input appended to the instruction
            instruction = f"{instruction}\n\n{row[m['input']]}"
        rid = str(row[m["id"]]) if "id" in m and m["id"] in row else _stable_id(instruction, n)
        if rid in seen:
            raise RecordError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        reference = row.get(m["reference"]) if "reference" in m else None
        meta = {"source": str(src.path), "row": n}
        out.append(InstructionRecord(id=rid, instruction=instruction, reference=None if reference is None else str(reference), meta=meta))
    if not out:
        raise ConfigError(f"no instructions read from {src.path} (offset={src.offset}, limit={src.limit})")
    return out


def _stable_id(instruction: str, n: int) -> str:
    return hashlib.sha256(f"{n}\x00{instruction}".encode()).hexdigest()[:12]
