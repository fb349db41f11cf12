"""Keeping credentials out of configs, manifests, records, caches and logs: the one secret detector.

* :func:`find_secrets` names the places in a config that hold a credential: a value under a
  secret-looking key (``api_key``, ``hf_token``, ``Authorization``, ``password``...), a URL with
  ``user:password@``, or a value shaped like a key (``Bearer ...``, ``sk-...``, ``hf_...``). Configs
  are saved in manifests, so loading one that holds a credential is an error: name the environment
  variable instead (``api_key_env: OPENAI_API_KEY``).
* :func:`scrub` / :func:`scrub_text` replace such values, and every value of an environment
  variable a config names (:func:`register_env_secrets`), before anything is written or logged;
  :func:`install_log_filter` applies that to every log record of the process.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
_KEY_WORDS = (
    "api_key",
    "apikey",
    "api-key",
    "secret",
    "password",
    "passwd",
    "authorization",
    "credential",
    "access_key",
    "private_key",
    "bearer",
    "cookie",
)
_VALUE_PATTERNS = [
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
]
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s:]*:[^/@\s]*|[^/@\s:]+)@")

_known: set[str] = set()
_lock = threading.Lock()


_NOT_SECRET = {
    "pad_token",
    "eos_token",
    "bos_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "cache_key",
    "sort_key",
    "primary_key",
}


def is_secret_key(key: Any) -> bool:
    """``api_key``, ``hf_token``, ``Authorization``, ``x-api-key`` are secret keys; ``api_key_env`` (the
    *name* of a variable), ``max_new_tokens`` and ``completion_tokens`` (counts), ``pad_token`` are not."""
    k = str(key).lower()
    if k.endswith(("_env", "_env_var")) or k in _NOT_SECRET:
        return False
    if any(w in k for w in _KEY_WORDS):
        return True
    return re.split(r"[_\-.]", k)[-1] in ("token", "key")


def _url_has_credentials(text: str) -> bool:
    return bool(_URL_CREDENTIALS.search(text))


def find_secrets(obj: Any, path: str = "") -> list[str]:
    """Dotted paths of credentials in a config-like object (see the module docstring)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if is_secret_key(k) and _holds_text(v):
                found.append(p)
            else:
                found += find_secrets(v, p)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += find_secrets(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        if _url_has_credentials(obj):
            found.append(f"{path} (credentials in a URL)")
        elif any(p.search(obj) for p in _VALUE_PATTERNS):
            found.append(f"{path} (looks like a key)")
    return found


def _holds_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):
        return any(_holds_text(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_text(v) for v in value)
    return False


def register(values: Iterable[str | None]) -> None:
    """Values that must never be written or logged (e.g. the API key read from the environment)."""
    with _lock:
        _known.update(v for v in values if v and len(v) >= 4)


def register_env_secrets(obj: Any) -> None:
    """Register the value of every environment variable named by an ``*_env`` key (``api_key_env``)."""
    names: list[str] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if str(k).lower().endswith("_env") and isinstance(v, str):
                    names.append(v)
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    register(os.environ.get(n) for n in names)


def strip_url_credentials(url: str) -> str:
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def scrub_known(text: str | None) -> str | None:
    """Only the registered values replaced (for model output, where a key-shaped string may be content)."""
    if not isinstance(text, str) or not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def scrub_text(text: str) -> str:
    """The text with registered secrets, key-shaped values and URL credentials replaced."""
    text = scrub_known(text)
    if not isinstance(text, str) or not text:
        return text
    text = _URL_CREDENTIALS.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def redact_value(key: Any, value: Any) -> Any:
    if is_secret_key(key) and _holds_text(value):
        return REDACTED
    return scrub(value)


def scrub(obj: Any) -> Any:
    """A copy of ``obj`` with every secret replaced (keys kept, values redacted)."""
    if isinstance(obj, dict):
        return {k: redact_value(k, v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(scrub(v) for v in obj)
    if isinstance(obj, str):
        return scrub_text(obj)
    return obj


_installed = False


def install_log_filter() -> None:
    """Scrub every log record of the process (any logger, any handler) as it is created."""
    global _installed
    if _installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string stays the logger's problem
            return record
        clean = scrub_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
