"""On-disk cache of critic completions, so a restarted run never pays for the same call twice.

One JSON file per key (``<dir>/<key[:2]>/<key>.json``), written to a temporary file and moved into
place with ``os.replace``: a crash leaves either the old state or the full entry, never half a file,
and concurrent writers (threads or processes) of the same key simply race to an identical result.
Only successful completions are stored; entries never hold an API key (they are keyed by the
settings that change the output, see :func:`cache_key`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from srt.io import atomic_write_json, json_sha256

DEFAULT_CACHE_DIR = Path("~/.cache/srt/critic_cache")


def cache_key(settings: dict[str, Any], prompt: str) -> str:
    """sha256 over the output-affecting settings and the prompt (canonical JSON, sorted keys)."""
    return json_sha256({"settings": settings, "prompt": prompt})


class CompletionCache:
    def __init__(self, directory: str | os.PathLike[str] | None):
        self.directory = Path(directory if directory is not None else DEFAULT_CACHE_DIR).expanduser()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A damaged entry (disk trouble, manual edit) is a miss, not a crash: the call is redone.
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("text"), str):
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), {**entry, "key": key}, indent=None)

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json")) if self.directory.exists() else 0
