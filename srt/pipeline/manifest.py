"""Run manifests: everything needed to reproduce an output directory, written next to it.

Config (secrets refused at load time, and scrubbed again here), package versions, seed, data
hashes, model revision, critic template version and hash, git commit, command line.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from srt import critic_template
from srt.records import file_sha256

PACKAGES = ("srt", "torch", "lightning", "transformers", "peft", "tokenizers", "datasets", "lm_eval", "alpaca_eval", "pydantic", "openai")
_SECRET_HINTS = ("api_key", "apikey", "secret", "password", "authorization", "credential")


def _is_secret_key(key: Any) -> bool:
    """``hf_token``, ``openai_api_key``, ``auth_token`` are secrets; ``max_new_tokens`` and ``api_key_env``
    (the *name* of a variable) are not."""
    k = str(key).lower()
    if k.endswith("_env"):
        return False
    return any(h in k for h in _SECRET_HINTS) or re.split(r"[_\-.]", k)[-1] == "token"


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


def scrub(obj: Any) -> Any:
    """Drop values under secret-looking keys (``api_key_env`` names a variable: it is kept)."""
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if _is_secret_key(k) and not isinstance(v, (bool, int, float, type(None))) else scrub(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def write_manifest(out_dir: str | Path, *, config: dict[str, Any], seed: int, data_files: dict[str, str | Path] | None = None,
                   model: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {}
    for name, path in (data_files or {}).items():
        p = Path(path)
        data[name] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "seed": seed,
        "config": scrub(config),
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "critic_template": {"version": critic_template.TEMPLATE_VERSION, "hash": critic_template.TEMPLATE_HASH},
        "model": model or {},
        "data": data,
        **(extra or {}),
    }
    path = out_dir / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path
