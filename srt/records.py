"""Versioned record schema and crash-safe JSONL files.

Every artifact of the pipeline (instructions, feedback records, preference pairs) is a JSONL file:
one JSON object per line, validated by the pydantic models below.

Reading goes through one line decoder (:func:`decode_json_line`) and one line loop
(:class:`JsonLines`), used by :class:`JsonlReader` / :func:`read_jsonl`, :func:`existing_ids` and the
instruction reader (:mod:`srt.pipeline.instructions`). It is streaming and strict by default: the
first bad line raises :class:`~srt.errors.RecordError` with ``"<path>:<lineno>: <what is wrong>"``
(invalid UTF-8, invalid JSON, JSON nested more than :data:`MAX_JSON_DEPTH` levels, a string that is
not valid Unicode such as a lone surrogate escape ``"\\ud800"``, not an object, a schema error, a
duplicate id naming the first line). In lenient mode bad lines go to a rejects file
(``<path>.rejects.jsonl``) and are counted, never silently lost.

Writing (:class:`JsonlWriter`) appends one full line per record with a single write + flush, so a
crash can only leave a partial *last* line: a JSON fragment without a newline. Readers skip such a
fragment with a warning (lenient mode also keeps it in the rejects file), and a writer re-opening
the file in append mode cuts it so the run resumes cleanly. Any other unterminated last line is
data: complete JSON is a normal record (hand-written files often lack the final newline), anything
else is a bad line like any other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srt.errors import ConfigError, RecordError, validation_problems

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


class Message(_Record):
    """One turn of a conversation (TRL's conversational format)."""

    role: Literal["system", "user", "assistant"]
    content: str


class InstructionRecord(_Record):
    """Input to generation. ``context``: the conversation before the instruction (a system message and
    earlier turns, as TRL's conversational data has them); the instruction is the last user turn."""

    unique_ids: ClassVar[bool] = True  # JsonlReader's default: a file holds each id once
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    instruction: str
    context: list[Message] = []
    reference: str | None = None  # gold answer, when the data has one
    meta: dict[str, Any] = {}

    _instruction_non_empty = field_validator("instruction")(_non_empty)


class FeedbackRecord(_Record):
    unique_ids: ClassVar[bool] = True  # JsonlReader's default: a file holds each id once
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    instruction: str
    context: list[Message] = []  # the conversation before the instruction (see InstructionRecord)
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
    unique_ids: ClassVar[bool] = True  # JsonlReader's default: a file holds each id once
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    id: str
    prompt: str
    context: list[Message] = []  # the conversation before the prompt (see InstructionRecord)
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
    return validation_problems(err, model=model, hint="put free-form data in 'meta'")


# ---------------------------------------------------------------------------------------------
# One JSONL line decoder, one line loop (used by every JSONL reader: records, pairs, instructions)

MAX_JSON_DEPTH = 100  # containers inside containers; pydantic cannot even serialize ~255
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way a lone surrogate gets into decoded text
_JSON_WS = " \t\n\r"
_STRING_BODY = re.compile(r'(?:[^"\\\x00-\x1f]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NUMBER_PREFIX = re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*)?(?:(?<=\d)[eE][-+]?\d*)?)?")
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")  # Python's json reads the last three too


class JsonLineError(ValueError):
    """One JSONL line that cannot be decoded. ``reason`` is one line; ``fragment`` is True when the
    line is the beginning of valid JSON that stops early (what a write cut short by a crash leaves)."""

    def __init__(self, reason: str, fragment: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.fragment = fragment


def _string_end(text: str, i: int) -> int | None:
    """``text[i]`` opens a JSON string: index after its closing quote; -1 when the text ends inside
    the string (validly so far); None when the string is invalid (bad escape, control character)."""
    j = _STRING_BODY.match(text, i + 1).end()
    if j == len(text):
        return -1
    if text[j] == '"':
        return j + 1
    if text[j] == "\\" and _PARTIAL_ESCAPE.fullmatch(text, j):
        return -1  # cut inside an escape such as \u12
    return None


def _json_fragment_state(text: str) -> str | None:
    """How ``text`` ends if it is an *incomplete* beginning of one JSON value: ``"string"`` (inside a
    string) or ``"value"``; None if it is complete, or invalid before its end (``{"a": 1} x``)."""
    stack: list[str] = []
    state = "value"  # value | value_or_close | key | key_or_close | colon | comma_or_close | done
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _JSON_WS:
            i += 1
        if i == n:
            return None if state == "done" else "value"
        c = text[i]
        if state == "done":
            return None
        if state == "colon":
            if c != ":":
                return None
            state, i = "value", i + 1
            continue
        if state in ("comma_or_close", "key_or_close", "value_or_close") and c == ("}" if stack[-1] == "{" else "]"):
            stack.pop()
            state, i = ("comma_or_close" if stack else "done"), i + 1
            continue
        if state == "comma_or_close":
            if c != ",":
                return None
            state, i = ("key" if stack[-1] == "{" else "value"), i + 1
            continue
        if state in ("key", "key_or_close"):
            if c != '"':
                return None
            end = _string_end(text, i)
            if end is None:
                return None
            if end == -1:
                return "string"
            state, i = "colon", end
            continue
        # A value is expected here.
        if c in "{[":
            stack.append(c)
            state, i = ("key_or_close" if c == "{" else "value_or_close"), i + 1
            continue
        if c == '"':
            end = _string_end(text, i)
            if end is None:
                return None
            if end == -1:
                return "string"
            i = end
        elif c == "-" or c.isdigit():
            if "-Infinity".startswith(text[i:]) or _NUMBER_PREFIX.fullmatch(text, i):
                # A number (or -Infinity) running to the end: cut short, unless it is the whole value.
                return None if not stack and _NUMBER.fullmatch(text, i) else "value"
            if text.startswith("-Infinity", i):
                i += len("-Infinity")
            else:
                m = _NUMBER.match(text, i)
                if m is None:
                    return None
                i = m.end()
        else:
            for literal in _LITERALS:
                if text.startswith(literal, i):
                    i += len(literal)
                    break
                if literal.startswith(text[i:]):
                    return "value"
            else:
                return None
        state = "comma_or_close" if stack else "done"


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _lone_surrogate(s: str) -> str | None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"lone surrogate \\u{ord(s[e.start]):04x} at index {e.start}"
    return None


def json_text_problem(value: Any, *, surrogates: bool = True, depth: bool = True) -> str | None:
    """The first reason a decoded JSON value cannot be used as text data, or None: a string (value or
    key) that is not valid Unicode (a lone surrogate from an escape like ``"\\ud800"``: it cannot be
    encoded, so it would crash a tokenizer or a writer), or nesting deeper than MAX_JSON_DEPTH."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 1)]
    while stack:
        v, path, level = stack.pop()
        if isinstance(v, str):
            bad = surrogates and _lone_surrogate(v)
            if bad:
                where = f"field '{_dotted(path)}': " if path else ""
                return f"{where}text is not valid Unicode ({bad})"
            continue
        if isinstance(v, dict):
            items = list(v.items())
        elif isinstance(v, list):
            items = list(enumerate(v))
        else:
            continue
        if depth and level > MAX_JSON_DEPTH:
            return f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        for key, child in reversed(items):  # reversed: the first problem in document order is reported
            if surrogates and isinstance(key, str) and (bad := _lone_surrogate(key)):
                where = f"field '{_dotted(path)}': " if path else ""
                return f"{where}key {key!r} is not valid Unicode ({bad})"
            stack.append((child, path + (key,), level + 1))
    return None


def decode_json_line(raw: bytes) -> Any:
    """Decode one JSONL line (bytes) into a JSON value, or raise :class:`JsonLineError` with a
    one-line reason: invalid UTF-8 (byte offset), invalid JSON (column), nesting deeper than
    MAX_JSON_DEPTH, or text that is not valid Unicode (lone surrogates, naming the field)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # Cut inside a multi-byte character: a fragment when what comes before ends inside a string.
        fragment = e.reason == "unexpected end of data" and e.end == len(raw)
        if fragment:
            try:
                fragment = _json_fragment_state(raw[: e.start].decode("utf-8")) == "string"
            except UnicodeDecodeError:
                fragment = False
        raise JsonLineError(f"invalid UTF-8 at byte {e.start}", fragment) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        fragment = _json_fragment_state(text) is not None
        raise JsonLineError(f"invalid JSON: {e.msg} at column {e.colno}", fragment) from None
    except RecursionError:
        raise JsonLineError(f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    # Cheap gates first: no surrogate escape, no deep nesting possible -> nothing to walk.
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    if surrogates or deep:
        problem = json_text_problem(obj, surrogates=surrogates, depth=deep)
        if problem:
            raise JsonLineError(problem)
    return obj


class RowRejects:
    """Where bad rows go: strict (default) raises :class:`~srt.errors.RecordError` naming
    ``<path>:<line>``; lenient appends ``{file, line, reason, raw}`` to ``rejects_path``
    (default ``<path>.rejects.jsonl``) and counts it. Also checks ids for duplicates."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        lenient: bool = False,
        rejects_path: str | os.PathLike | None = None,
        unit: Literal["line", "row"] = "line",
    ):
        self.path = Path(path)
        self.lenient = lenient
        self.rejects_path = Path(rejects_path) if rejects_path else Path(f"{self.path}.rejects.jsonl")
        self.unit = unit  # "line" for JSONL files; "row" for items of a JSON list or a dataset
        self.rejected = 0
        self._first_seen: dict[str, int] = {}

    def where(self, n: int) -> str:
        return f"{self.path}:{n}" if self.unit == "line" else f"{self.path}: row {n}"

    def bad(self, n: int, raw: bytes | str, reason: str) -> None:
        """Line (or row) ``n`` is bad: raise in strict mode, keep it in the rejects file in lenient mode."""
        if not self.lenient:
            raise RecordError(f"{self.where(n)}: {reason}")
        self.keep_rejected(n, raw, reason)

    def keep_rejected(self, n: int, raw: bytes | str, reason: str) -> None:
        self.rejected += 1
        logger.warning("%s: rejected (%s) -> %s", self.where(n), reason, self.rejects_path)
        if isinstance(raw, bytes):
            raw = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        entry = {"file": str(self.path), self.unit: n, "reason": reason, "raw": raw}
        try:
            with JsonlWriter(self.rejects_path, fsync=False) as w:
                w.write(entry)
        except OSError as e:
            raise RecordError(f"{self.rejects_path}: cannot write the rejects file ({e.strerror or e})") from None

    def unique(self, n: int, raw: bytes | str, rid: str) -> bool:
        """True for the first line with id ``rid``; a later one is bad (raised or rejected): False."""
        first = self._first_seen.setdefault(rid, n)
        if first == n:
            return True
        self.bad(n, raw, f"duplicate id {rid!r} (first at {self.unit} {first})")
        return False

    def reset(self) -> None:
        self.rejected = 0
        self._first_seen.clear()


class JsonLines(RowRejects):
    """The one JSONL line loop: yields ``(lineno, raw_bytes, obj)`` for each line holding a JSON
    object, streaming (one line in memory at a time).

    Blank lines are skipped. A line that cannot be decoded (:func:`decode_json_line`) or is not an
    object is bad (:meth:`bad`: raised in strict mode, rejected in lenient mode); a consumer calls
    :meth:`bad` / :meth:`unique` for its own checks. An unterminated last line that is a JSON
    *fragment* (valid JSON cut short: a write interrupted by a crash) is skipped with a warning
    (``truncated_tail``; lenient mode also keeps it in the rejects file); any other malformed last
    line is bad like any other line. A complete last line without a newline is a normal line.
    """

    def __init__(
        self, path: str | os.PathLike, *, lenient: bool = False, rejects_path: str | os.PathLike | None = None
    ):
        super().__init__(path, lenient=lenient, rejects_path=rejects_path)
        self.lines = 0  # non-blank lines seen
        self.truncated_tail = False

    def __iter__(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        self.reset()
        self.lines = 0
        self.truncated_tail = False
        if not self.path.exists():
            raise RecordError(f"{self.path}: file not found")
        if self.path.is_dir():
            raise RecordError(f"{self.path}: is a directory, not a JSONL file")
        with open(self.path, "rb") as f:  # binary: we split on b"\n" only, and decode per line
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                self.lines += 1
                try:
                    obj = decode_json_line(raw)
                    if not isinstance(obj, dict):
                        raise JsonLineError(f"expected a JSON object, got {type(obj).__name__}")
                except JsonLineError as err:
                    if err.fragment and not raw.endswith(b"\n"):  # only the last line can lack "\n"
                        self.truncated_tail = True
                        logger.warning(
                            "%s:%d: skipping unterminated last line (%d bytes, likely an interrupted write): %s",
                            self.path,
                            lineno,
                            len(raw),
                            err.reason,
                        )
                        if self.lenient:
                            reason = f"unterminated last line (likely an interrupted write): {err.reason}"
                            self.keep_rejected(lineno, raw, reason)
                        continue
                    self.bad(lineno, raw, err.reason)
                    continue
                yield lineno, raw, obj

    def no_records_error(self) -> RecordError:
        """The error for a file that gave no usable record (empty, blank, only a fragment, all rejected)."""
        if self.rejected > (1 if self.truncated_tail and self.lenient else 0):
            return RecordError(f"{self.path}: no valid records ({self.rejected} rejected, see {self.rejects_path})")
        if self.truncated_tail:
            return RecordError(f"{self.path}: no records (only an unterminated last line, likely an interrupted write)")
        return RecordError(f"{self.path}: empty file (no records)")


class JsonlReader(Generic[M]):
    """Iterate validated records of a JSONL file, one line at a time (on :class:`JsonLines`).

    After (or during) iteration: ``read`` = records yielded, ``rejected`` = bad lines written to
    ``rejects_path`` (lenient mode only; an interrupted last line counts too), ``truncated_tail`` =
    True when an unterminated last line that is a JSON fragment (a write interrupted by a crash) was
    skipped. Each iteration re-reads the file and resets them. Rejects are *appended* to the rejects
    file, so it keeps the history of every lenient read.

    ``unique_ids``: a second line with an id already seen is bad (``duplicate id 'x' (first at line
    3)``); None (default) takes the model's ``unique_ids`` class attribute (True for
    InstructionRecord, FeedbackRecord and PreferencePair; a model without it, such as the pipeline's
    critic-call log whose key is (id, mode), is not checked). ``allow_empty=False`` makes a file with
    no valid record (empty, blank lines only, only an interrupted line, everything rejected) a
    RecordError naming it, for training data; the default True suits resume files, which may
    legitimately be empty.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: type[M],
        *,
        lenient: bool = False,
        rejects_path: str | os.PathLike | None = None,
        unique_ids: bool | None = None,
        allow_empty: bool = True,
    ):
        self._lines = JsonLines(path, lenient=lenient, rejects_path=rejects_path)
        self.path = self._lines.path
        self.model = model
        self.lenient = lenient
        self.rejects_path = self._lines.rejects_path
        self.unique_ids = getattr(model, "unique_ids", False) if unique_ids is None else unique_ids
        self.allow_empty = allow_empty
        self.read = 0

    @property
    def rejected(self) -> int:
        return self._lines.rejected

    @property
    def truncated_tail(self) -> bool:
        return self._lines.truncated_tail

    def __iter__(self) -> Iterator[M]:
        self.read = 0
        lines = self._lines
        for lineno, raw, obj in lines:
            try:
                record = self.model.model_validate(obj)
            except ValidationError as e:
                lines.bad(lineno, raw, describe_validation_error(e, self.model))
                continue
            if self.unique_ids and not lines.unique(lineno, raw, record.id):
                continue
            self.read += 1
            yield record
        if not self.read and not self.allow_empty:
            raise lines.no_records_error()


def read_jsonl(
    path: str | os.PathLike,
    model: type[M],
    *,
    lenient: bool = False,
    rejects_path: str | os.PathLike | None = None,
    unique_ids: bool | None = None,
    allow_empty: bool = True,
) -> Iterator[M]:
    """Stream validated records; see :class:`JsonlReader` (use it directly to get the counts)."""
    return iter(
        JsonlReader(
            path, model, lenient=lenient, rejects_path=rejects_path, unique_ids=unique_ids, allow_empty=allow_empty
        )
    )


def _repair_tail(path: Path) -> None:
    """Before appending: an unterminated last line that is a JSON fragment (an interrupted write) is
    cut; any other unterminated last line (complete JSON, or text that is no fragment) is kept and
    ended with a newline, so appending never glues a record onto it and nothing is lost."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
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
        f.seek(keep)
        tail = f.read()
        if not tail.strip():
            return  # trailing blank space: harmless
        try:
            decode_json_line(tail)
            reason = None
        except JsonLineError as err:
            if err.fragment:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
                logger.warning(
                    "%s: removed an unterminated last line (%d bytes) left by an interrupted write", path, size - keep
                )
                return
            reason = err.reason
        f.seek(size)
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
        if reason:
            logger.warning(
                "%s: the last line had no newline and is not valid (%s); kept it and added the newline", path, reason
            )


class JsonlWriter:
    """Crash-safe JSONL writer: each record is one full line, written with a single write + flush.

    ``mode="a"`` (default) appends; first, an unterminated last line is cut when it is a JSON
    fragment left by a crash, and otherwise ended with a newline (a hand-written complete line is
    kept). ``mode="w"`` starts a new file. ``fsync`` forces the data to disk on close, and
    additionally every ``fsync_every`` records when that is set (``None``: only on close). A record
    holding text that is not valid Unicode (a lone surrogate) is refused with a RecordError naming
    the field, before anything is written.

    ``shared=True`` (appending only) is for a file that other processes append to at the same time
    (a generation cache that several runs share): the tail repair on open and every write hold an
    exclusive ``flock`` on the file, so a line another process is writing is never taken for a
    crash's fragment and cut, and no two lines interleave. Without ``flock`` (some network
    filesystems) it writes unlocked, as a single-process writer does.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        mode: Literal["a", "w"] = "a",
        *,
        fsync: bool = True,
        fsync_every: int | None = None,
        shared: bool = False,
    ):
        if mode not in ("a", "w"):
            raise ValueError(f"JsonlWriter mode must be 'a' or 'w', got {mode!r}")
        if shared and mode != "a":
            raise ValueError("JsonlWriter(shared=True) appends: mode must be 'a'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.fsync_every = fsync_every
        self.written = 0
        self._file = open(self.path, "ab" if mode == "a" else "wb")
        self._shared = shared
        if mode == "a":
            with self._locked():
                _repair_tail(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._shared:
            yield
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        except OSError as err:  # no flock on this filesystem
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            self._shared = False
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def write(self, record: BaseModel | dict[str, Any]) -> None:
        try:
            if isinstance(record, BaseModel):
                data = (record.model_dump_json() + "\n").encode("utf-8")
            else:
                data = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        except (UnicodeEncodeError, ValueError) as e:
            value = record.model_dump() if isinstance(record, BaseModel) else record
            problem = json_text_problem(value, depth=False)
            if problem is None:
                raise
            raise RecordError(f"{self.path}: cannot write a record: {problem}") from e
        # JSON escapes newlines inside strings, so this is exactly one line.
        with self._locked():
            self._file.write(data)
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

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def existing_ids(path: str | os.PathLike) -> set[str]:
    """Ids already written to ``path`` (for resume). A missing or empty file gives an empty set; an
    unterminated last line that is a JSON fragment (interrupted write) is ignored; any other bad
    line raises RecordError with ``file:line``. Ids may repeat (a resume log)."""
    path = Path(path)
    ids: set[str] = set()
    if not path.exists():
        return ids
    for lineno, _, obj in JsonLines(path):
        if not isinstance(obj.get("id"), str):
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


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create directory ``path`` (with parents) if needed and check that files can be created in it.

    Raises :class:`~srt.errors.ConfigError` with one line (the CLI prints ``Error: <line>``) when it
    is a file, lies under a file, cannot be created, or is not writable. Returns the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        detail = f"{blocker} is a file, not a directory" if blocker else "a part of the path is not a directory"
        raise ConfigError(f"cannot create {what} {p}: {detail}") from None
    except OSError as e:
        raise ConfigError(f"cannot create {what} {p}: {e.strerror or e}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".srt-write-check-")
    except OSError as e:
        raise ConfigError(f"{what} {p} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    return p
