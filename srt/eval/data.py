"""Benchmark data files, read row by row with ``file:line`` errors.

JSONL files go through the project's one JSONL line loop (:class:`srt.records.JsonLines`): invalid
UTF-8, invalid JSON, a line that is not an object, JSON nested too deeply and text that is not valid
Unicode are ``<path>:<line>: <reason>``; an interrupted (fragment) last line is skipped with a
warning. A ``.json`` file holds one list of objects; its problems are ``<path>:<line>`` where the
JSON parser stops, and ``<path>: row <n>`` for a bad row. Row checks a reader adds (a missing
field, a duplicate id) use the same places through :meth:`DataRows.bad` and :meth:`DataRows.unique`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from srt.errors import RecordError
from srt.records import JsonLines, RowRejects, json_text_problem


class DataRows:
    """``for n, raw, row in DataRows(path):`` - each row of a JSONL file (``n`` = its line) or of a
    JSON list file (``n`` = its position from 1). ``what`` names the file in a not-found error."""

    def __init__(self, path: str | os.PathLike, what: str = "data file"):
        self.path = Path(path)
        if not self.path.exists():
            raise RecordError(f"{self.path}: {what} not found")
        if self.path.is_dir():
            raise RecordError(f"{self.path}: {what} is a directory, not a file")
        self.is_json = self.path.suffix.lower() == ".json"
        self._rows: RowRejects = RowRejects(self.path, unit="row") if self.is_json else JsonLines(self.path)
        self.count = 0

    def __iter__(self) -> Iterator[tuple[int, bytes | str, dict[str, Any]]]:
        self._rows.reset()
        self.count = 0
        rows = self._json_rows() if self.is_json else iter(self._rows)
        for n, raw, row in rows:
            self.count += 1
            yield n, raw, row

    def _json_rows(self) -> Iterator[tuple[int, str, dict[str, Any]]]:
        data = self.path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise RecordError(f"{self.path}:{line}: invalid UTF-8 at byte {err.start}") from None
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"{self.path}:{err.lineno}: invalid JSON: {err.msg} at column {err.colno}") from None
        except RecursionError:
            raise RecordError(f"{self.path}: JSON nested too deeply") from None
        if not isinstance(rows, list):
            raise RecordError(f"{self.path}: expected a JSON list of objects, got {type(rows).__name__}")
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                self.bad(n, "", f"expected a JSON object, got {type(row).__name__}")
                continue
            problem = json_text_problem(row)
            if problem:
                self.bad(n, "", problem)
                continue
            yield n, "", row

    def where(self, n: int) -> str:
        return self._rows.where(n)

    def bad(self, n: int, raw: bytes | str, reason: str) -> None:
        """Row ``n`` is bad: a RecordError naming the file and the line (or row)."""
        self._rows.bad(n, raw, reason)

    def unique(self, n: int, raw: bytes | str, rid: str) -> None:
        """A second row with id ``rid`` is bad (``duplicate id 'x' (first at line 3)``)."""
        self._rows.unique(n, raw, rid)

    def empty_error(self) -> RecordError:
        if isinstance(self._rows, JsonLines):
            return self._rows.no_records_error()
        return RecordError(f"{self.path}: empty list (no records)")


def check_fields(path: str | os.PathLike, fields: Sequence[str], what: str = "data file") -> int:
    """Every row of ``path`` has the keys ``fields``; the number of rows (an empty file is an error)."""
    rows = DataRows(path, what)
    for n, raw, row in rows:
        missing = [f for f in fields if f not in row]
        if missing:
            rows.bad(n, raw, f"missing field(s) {', '.join(repr(f) for f in missing)} (each row needs {list(fields)})")
    if not rows.count:
        raise rows.empty_error()
    return rows.count
