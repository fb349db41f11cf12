"""A hash of the srt sources that go into the srt wheel (stdlib only).

prepare.sh stores it next to the wheel it builds; run.sh compares it with the checkout it runs in,
so a wheel built from older sources is noticed (and rebuilt offline) instead of silently measured.

    python benchmarks/gpu/tree_hash.py [ROOT]      # prints the hash
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SOURCES = ("srt", "plugins/srt_builtin")
FILES = ("setup.cfg", "pyproject.toml")


def srt_tree_hash(root: str | Path = ".") -> str:
    root = Path(root)
    paths = [root / f for f in FILES if (root / f).is_file()]
    for folder in SOURCES:
        paths += [
            p
            for p in (root / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ]
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    print(srt_tree_hash(sys.argv[1] if len(sys.argv) > 1 else "."))
