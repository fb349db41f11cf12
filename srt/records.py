"""Versioned record schema and crash-safe JSONL files.

Every artifact of the pipeline (instructions, feedback records, preference pairs) is a JSONL file:
one JSON object per line, validated by the pydantic models below.

Reading (:class:`JsonlReader`, :func:`read_jsonl`) is streaming and strict by default: the first bad
line raises :class:`~srt.errors.RecordError` with ``"<path>:<lineno>: <what is wrong>"``. In lenient
mode bad lines go to a rejects file (``<path>.rejects.jsonl``) and are counted, never silently lost.

Writing (:class:`JsonlWriter`) appends one full line per record with a single write + flush, so a
crash can only leave a partial *last* line. Readers skip such an unterminated tail with a warning,
and a writer re-opening the file in append mode truncates it so the run resumes cleanly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Generic, Iterable, Iterator, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srt.errors import RecordError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# 1..10 when set; strict, so true/"7"/7.0 are rejected instead of coerced.
Score = Annotated[int, Field(ge=1, le=10)]


class _Record(BaseModel):
    # Unknown top-level keys are errors (they are usually typos); free-form data goes in `meta`.
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _check_schema_version(cls, data: Any) -> Any:
        # Checked before field validation so a record from a newer srt says so, instead of
        # complaining about the fields it added.
        if isinstance(data, dict):
            version = data.get("schema_version", SCHEMA_VERSION)
            if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
                raise ValueError(
                    f"schema_version {version} is newer than this srt supports ({SCHEMA_VERSION}); upgrade srt"
                )
        return data


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class Feedback(_Record):
    weaknesses: str
    suggestions: str
    score: Score | None = None
    raw: str  # the critic's raw output, kept for audits and re-parsing


class CriticInfo(_Record):
    name: str
    model: str | None = None
    template_version: str
    template_hash: str
    settings: dict[str, Any] = {}


class InstructionRecord(_Record):
    """Input to generation."""

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    instruction: str
    reference: str | None = None  # gold answer, when the data has one
    meta: dict[str, Any] = {}

    _instruction_non_empty = field_validator("instruction")(_non_empty)


class FeedbackRecord(_Record):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    instruction: str
    response: str
    reference: str | None = None
    feedback: Feedback | None = None
    refinement: str | None = None
    refinement_score: Score | None = None
    critic: CriticInfo | None = None
    stage: Literal[1, 2]
    round: int = Field(default=0, ge=0)
    meta: dict[str, Any] = {}

    _instruction_non_empty = field_validator("instruction")(_non_empty)


class PreferencePair(_Record):
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_score: Score | None = None
    rejected_score: Score | None = None
    source_id: str | None = None  # id of the FeedbackRecord the pair came from
    critic: CriticInfo | None = None
    stage: Literal[1, 2] = 2
    round: int = Field(default=0, ge=0)
    meta: dict[str, Any] = {}

    _prompt_non_empty = field_validator("prompt")(_non_empty)


M = TypeVar("M", bound=BaseModel)


def describe_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """One readable line from a pydantic error: which field, what is wrong, what was given."""
    parts = []
    for e in err.errors(include_url=False):
        field = ".".join(str(p) for p in e["loc"]) or "<record>"
        if e["type"] == "missing":
            parts.append(f"missing field '{field}'")
        elif e["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields) if len(e["loc"]) == 1 else None
            hint = f" (allowed: {allowed}; put free-form data in 'meta')" if allowed else ""
            parts.append(f"unknown field '{field}'{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if not e["loc"]:  # a whole-record check (e.g. schema_version)
                parts.append(msg)
                continue
            given = repr(e.get("input"))
            if len(given) > 60:
                given = given[:57] + "..."
            parts.append(f"field '{field}': {msg} (got {given})")
    return "; ".join(parts)


class JsonlReader(Generic[M]):
    """Iterate validated records of a JSONL file, one line at a time.

    After (or during) iteration: ``read`` = records yielded, ``rejected`` = bad lines written to
    ``rejects_path`` (lenient mode only), ``truncated_tail`` = True when an unterminated last line
    (a write interrupted by a crash) was skipped. Each iteration re-reads the file and resets them.
    Rejects are *appended* to the rejects file, so it keeps the history of every lenient read.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: type[M],
        *,
        lenient: bool = False,
        rejects_path: str | os.PathLike | None = None,
    ):
        self.path = Path(path)
        self.model = model
        self.lenient = lenient
        self.rejects_path = Path(rejects_path) if rejects_path else Path(f"{self.path}.rejects.jsonl")
        self.read = 0
        self.rejected = 0
        self.truncated_tail = False

    def __iter__(self) -> Iterator[M]:
        self.read = self.rejected = 0
        self.truncated_tail = False
        if not self.path.exists():
            raise RecordError(f"{self.path}: file not found")
        with open(self.path, "rb") as f:  # binary: we split on b"\n" only, and decode per line
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = self._parse(raw)
                except _BadLine as bad:
                    if not raw.endswith(b"\n"):
                        # Only the last line can lack "\n": a write cut short by a crash.
                        self.truncated_tail = True
                        logger.warning(
                            "%s:%d: skipping unterminated last line (%d bytes, likely an interrupted write): %s",
                            self.path, lineno, len(raw), bad.reason,
                        )
                        continue
                    if not self.lenient:
                        raise RecordError(f"{self.path}:{lineno}: {bad.reason}") from None
                    self._reject(lineno, bad.reason, raw)
                    continue
                self.read += 1
                yield record

    def _parse(self, raw: bytes) -> M:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _BadLine(f"invalid UTF-8 at byte {e.start}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise _BadLine(f"invalid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(obj, dict):
            raise _BadLine(f"expected a JSON object, got {type(obj).__name__}")
        try:
            return self.model.model_validate(obj)
        except ValidationError as e:
            raise _BadLine(describe_validation_error(e, self.model)) from None

    def _reject(self, lineno: int, reason: str, raw: bytes) -> None:
        self.rejected += 1
        logger.warning("%s:%d: rejected (%s) -> %s", self.path, lineno, reason, self.rejects_path)
        entry = {
            "file": str(self.path),
            "line": lineno,
            "reason": reason,
            "raw": raw.rstrip(b"\r\n").decode("utf-8", errors="replace"),
        }
        with JsonlWriter(self.rejects_path, fsync=False) as w:
            w.write(entry)


class _BadLine(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def read_jsonl(
    path: str | os.PathLike,
    model: type[M],
    *,
    lenient: bool = False,
    rejects_path: str | os.PathLike | None = None,
) -> Iterator[M]:
    """Stream validated records; see :class:`JsonlReader` (use it directly to get the counts)."""
    return iter(JsonlReader(path, model, lenient=lenient, rejects_path=rejects_path))


def _truncate_partial_tail(path: Path) -> int:
    """Cut an unterminated last line (an interrupted write); return the number of bytes removed."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Scan backwards in blocks for the last newline.
        end, block = size, 65536
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            idx = f.read(end - start).rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


class JsonlWriter:
    """Crash-safe JSONL writer: each record is one full line, written with a single write + flush.

    ``mode="a"`` (default) appends and first truncates a partial last line left by a crash;
    ``mode="w"`` starts a new file. ``fsync`` forces the data to disk on close, and additionally
    every ``fsync_every`` records when that is set (``None``: only on close).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: Literal["a", "w"] = "a",
        *,
        fsync: bool = True,
        fsync_every: int | None = None,
    ):
        if mode not in ("a", "w"):
            raise ValueError(f"JsonlWriter mode must be 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.fsync_every = fsync_every
        self.written = 0
        if mode == "a" and self.path.exists():
            cut = _truncate_partial_tail(self.path)
            if cut:
                logger.warning(
                    "%s: removed an unterminated last line (%d bytes) left by an interrupted write",
                    self.path, cut,
                )
        self._file = open(self.path, "ab" if mode == "a" else "wb")

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        if isinstance(record, BaseModel):
            line = record.model_dump_json()
        else:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        # JSON escapes newlines inside strings, so this is exactly one line.
        self._file.write((line + "\n").encode("utf-8"))
        self._file.flush()
        self.written += 1
        if self.fsync_every and self.written % self.fsync_every == 0:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def existing_ids(path: str | os.PathLike) -> set[str]:
    """Ids already written to ``path`` (for resume). A missing file gives an empty set; an
    unterminated last line is ignored; any other unreadable line raises RecordError."""
    path = Path(path)
    ids: set[str] = set()
    if not path.exists():
        return ids
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if not raw.endswith(b"\n"):
                    continue  # interrupted write; the writer truncates it on reopen
                raise RecordError(f"{path}:{lineno}: unreadable line ({e.__class__.__name__})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise RecordError(f"{path}:{lineno}: expected a JSON object with a string 'id'")
            ids.add(obj["id"])
    return ids


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write all records to a temporary file next to ``path``, then rename it into place, so
    readers see either the old file or the complete new one. Returns the number of records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with JsonlWriter(tmp, mode="w", fsync=True) as w:
            for record in records:
                w.write(record)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return w.written


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (for manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
