"""Run manifests: everything needed to reproduce an output directory, written next to it.

Config (secrets refused at load time, and scrubbed again here), package versions, seed, data
hashes, model revision, critic template version and hash, git commit, command line.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from srt import critic_template
from srt.io import atomic_write_json, file_sha256, read_json
from srt.secrets import scrub, scrub_text

PACKAGES = (
    "srt",
    "torch",
    "lightning",
    "transformers",
    "peft",
    "tokenizers",
    "datasets",
    "lm_eval",
    "alpaca_eval",
    "pydantic",
    "openai",
)


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None
    except Exception:
        return None


def write_manifest(
    out_dir: str | Path,
    *,
    config: dict[str, Any],
    seed: int,
    data_files: dict[str, str | Path] | None = None,
    model: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir>/manifest.json``. A step's manifest is written when the step starts or resumes
    (never once it finished: the pipeline skips it then), so it describes what ran; every attempt
    (a resume after a crash or a preemption) is listed under ``attempts``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifest.json"
    data = {}
    for name, file in (data_files or {}).items():
        p = Path(file)
        data[name] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    previous = read_json(path, default={})
    attempt = {
        "started": now,
        "command": scrub_text(" ".join(sys.argv)),
        "git_commit": _git_commit(),
        "host": platform.node(),
    }
    manifest = {
        "created": previous.get("created", now),
        "command": attempt["command"],
        "seed": seed,
        "config": scrub(config),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": attempt["git_commit"],
        "critic_template": {"version": critic_template.TEMPLATE_VERSION, "hash": critic_template.TEMPLATE_HASH},
        "model": model or {},
        "data": data,
        **(extra or {}),
        "attempts": [*previous.get("attempts", []), attempt],
    }
    return atomic_write_json(path, scrub(manifest))
