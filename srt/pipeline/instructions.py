"""Instructions in: JSON/JSONL files or a Hugging Face dataset (hub id or local files), with a field mapping.

JSONL files are read with the project's one JSONL line loop (:class:`srt.records.JsonLines`), so
they get the same guarantees as records files: ``file:line`` errors for invalid UTF-8, invalid JSON,
JSON nested too deeply and text that is not valid Unicode (lone surrogates never reach a tokenizer),
an interrupted (fragment) last line skipped with a warning, any other malformed last line an error.
A JSON file is checked the same way row by row (``file: row N``). Row checks (missing or empty
instruction, duplicate id naming the first line) raise in strict mode (default); with
``lenient=True`` bad rows go to a rejects file (``<path>.rejects.jsonl``) and are counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srt.config import InstructionSource
from srt.errors import ConfigError, RecordError
from srt.io import text_sha256
from srt.records import InstructionRecord, JsonLines, Message, RowRejects, json_text_problem


def _format(src: InstructionSource) -> str:
    if src.format != "auto":
        return src.format
    suffix = Path(src.path).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    return "hf"


def _read_json_file(path: Path, split: str) -> list:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: invalid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise RecordError(f"{path}: JSON nested too deeply") from None
    if isinstance(obj, dict):  # {"data": [...]} or {"train": [...]} style
        obj = obj.get(split) or obj.get("data") or obj.get("instances")
    if not isinstance(obj, list):
        raise RecordError(f"{path}: expected a JSON list of objects (or an object holding one under {split!r})")
    return obj


def _row_text(row: Any) -> str:
    """A row as JSON text for the rejects file (escaped where it is not valid Unicode)."""
    text = json.dumps(row, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row, ensure_ascii=True, default=str)
    return text


def _rows(src: InstructionSource, rejects: RowRejects) -> Iterator[tuple[int, int, Any, bytes | str]]:
    """(position for messages, row index from 1, row, raw text) for each row that could be decoded."""
    fmt = _format(src)
    path = Path(src.path)
    if isinstance(rejects, JsonLines):
        for lineno, raw, obj in rejects:
            yield lineno, rejects.lines, obj, raw  # rows counted over non-blank lines, rejected ones too
    elif fmt == "json":
        for n, row in enumerate(_read_json_file(path, src.split), 1):
            problem = json_text_problem(row)
            if problem:
                rejects.bad(n, _row_text(row), problem)
                continue
            yield n, n, row, _row_text(row) if rejects.lenient else ""
    else:
        import datasets  # local folder saved with save_to_disk, local files, or a hub id

        if Path(src.path).is_dir() and (Path(src.path) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(src.path)
            ds = ds[src.split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(src.path, src.name, split=src.split)
        for n, row in enumerate(ds, 1):  # Arrow strings are valid UTF-8: no text check needed
            yield n, n, row, _row_text(row) if rejects.lenient else ""


def conversation(value: Any) -> tuple[str, list[Message]] | str:
    """(the last user turn, the turns before it) of a TRL-style ``[{role, content}, ...]`` list, or why
    it is not one. Turns after the last user turn (an answer in SFT data) are not kept: srt answers itself."""
    if not isinstance(value, list) or not value:
        return "expected a non-empty list of {role, content} messages"
    try:
        turns = [Message.model_validate(t) for t in value]
    except Exception as exc:  # noqa: BLE001 - pydantic's message, in one line
        return f"not a list of {{role, content}} messages ({str(exc).splitlines()[-1].strip()})"
    last = max((i for i, t in enumerate(turns) if t.role == "user"), default=None)
    if last is None:
        return "the conversation has no user turn"
    return turns[last].content, turns[:last]


def load_instructions(
    src: InstructionSource, *, lenient: bool = False, rejects_path: str | os.PathLike | None = None
) -> list[InstructionRecord]:
    """Read, map fields, validate (non-empty instruction, unique ids) and slice (offset/limit: rows
    of the source, blank lines not counted). Strict by default; ``lenient`` keeps bad rows in
    ``rejects_path`` (default ``<path>.rejects.jsonl``) instead of stopping (module doc)."""
    m = src.fields
    fmt = _format(src)
    path = Path(src.path)
    if fmt in ("jsonl", "json") and not path.is_file():
        raise ConfigError(f"instructions file not found: {path}")
    if fmt == "jsonl":
        rejects: RowRejects = JsonLines(path, lenient=lenient, rejects_path=rejects_path)
    else:
        rejects = RowRejects(path, lenient=lenient, rejects_path=rejects_path, unit="row")
    out: list[InstructionRecord] = []
    rows = 0
    for n, index, row, raw in _rows(src, rejects):
        rows = index
        if index <= src.offset:
            continue
        if src.limit is not None and len(out) >= src.limit:
            break
        if not isinstance(row, dict):
            rejects.bad(n, raw, f"expected an object, got {type(row).__name__}")
            continue
        key = m.get("instruction") or m["messages"]
        if key not in row:
            what = "instruction" if "instruction" in m else "messages"
            rejects.bad(n, raw, f"missing field {key!r} (mapped to {what}; see data.*.fields)")
            continue
        context: list[Message] = []
        if "messages" in m:
            turns = conversation(row[key])
            if isinstance(turns, str):
                rejects.bad(n, raw, f"field {key!r}: {turns}")
                continue
            instruction, context = turns
        else:
            instruction = row[key]
        if not isinstance(instruction, str) or not instruction.strip():
            rejects.bad(n, raw, "instruction must be a non-empty string")
            continue
        if "input" in m and row.get(m["input"]):  # Alpaca-style extra input appended to the instruction
            instruction = f"{instruction}\n\n{row[m['input']]}"
        rid = str(row[m["id"]]) if "id" in m and m["id"] in row else _stable_id(instruction, n)
        if not rejects.unique(n, raw, rid):
            continue
        reference = row.get(m["reference"]) if "reference" in m else None
        meta = {"source": str(src.path), "row": n}
        reference = None if reference is None else str(reference)
        out.append(InstructionRecord(id=rid, instruction=instruction, context=context, reference=reference, meta=meta))
    if not out:
        if isinstance(rejects, JsonLines) and rows == 0:
            raise rejects.no_records_error()
        if rejects.rejected:
            raise RecordError(
                f"{path}: no valid instructions ({rejects.rejected} rejected, see {rejects.rejects_path})"
            )
        if rows == 0 and fmt == "json":
            raise RecordError(f"{path}: empty list (no instructions)")
        raise ConfigError(f"no instructions read from {src.path} (offset={src.offset}, limit={src.limit})")
    return out


def _stable_id(instruction: str, n: int) -> str:
    return text_sha256(f"{n}\x00{instruction}", 12)


def check_source(src: InstructionSource, what: str) -> None:
    """Plan check (no model, nothing written): the source exists and every mapped field is in its
    first row past ``offset``. Raises ConfigError/RecordError naming ``what`` (e.g. ``data.stage1``)."""
    fmt = _format(src)
    path = Path(src.path)
    if fmt in ("jsonl", "json") and not path.is_file():
        raise ConfigError(f"{what}.path: instructions file not found: {path}")
    if fmt == "hf" and not path.is_dir():
        import datasets

        try:  # a hub dataset: stream the first row instead of downloading it all
            ds = datasets.load_dataset(src.path, src.name, split=src.split, streaming=True)
            row = next(iter(ds), None)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, bad split: all one message
            raise ConfigError(
                f"{what}.path: cannot open dataset {src.path!r} (split {src.split!r}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        rows = [] if row is None else [(1, row)]
    else:
        rejects = JsonLines(path) if fmt == "jsonl" else RowRejects(path, unit="row")
        rows = ((n, row) for n, index, row, _ in _rows(src, rejects) if index > src.offset)
    for n, row in rows:
        if not isinstance(row, dict):
            raise RecordError(f"{src.path}:{n}: expected an object, got {type(row).__name__}")
        missing = {ours: theirs for ours, theirs in src.fields.items() if theirs not in row}
        if missing:
            mapped = ", ".join(f"{ours} <- {theirs!r}" for ours, theirs in missing.items())
            raise ConfigError(
                f"{what}.fields: {mapped} not found in the first row of {src.path} "
                f"(its fields: {', '.join(sorted(map(str, row)))})"
            )
        return
    raise ConfigError(f"{what}: no rows in {src.path} past offset {src.offset}")
