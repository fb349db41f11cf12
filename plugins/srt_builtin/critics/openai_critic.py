"""Critic served by any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, llama.cpp...).

The paper's critic is GPT-4 at temperature 0 with up to 2,048 new tokens; those are the defaults.
What this plugin adds around the official ``openai`` client:

* retries it does itself (the client is built with ``max_retries=0``) so they are logged and
  counted: exponential backoff with full jitter on 429, 408/409, 5xx, timeouts, dropped
  connections and malformed bodies, honouring ``Retry-After`` / ``retry-after-ms`` (capped);
  other 4xx fail at once. A call that still fails is a reply with ``error`` set, never an exception;
* bounded concurrency (a thread pool of ``max_concurrency``) with a progress bar;
* an on-disk cache keyed by every setting that changes the output plus the prompt, so a restarted
  run never pays twice (cached replies cost 0 and say ``usage["cached"] = True``);
* token and cost accounting (:meth:`OpenAICritic.stats`).

The API key is read once, from the environment variable *named* by ``api_key_env``; it is never
logged, returned by :meth:`describe`, or written to the cache.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import TEMPLATE_HASH, TEMPLATE_VERSION, render_critic_prompt
from srt.errors import CriticError, validation_problems
from srt.secrets import register as register_secrets
from srt.secrets import scrub_known, scrub_text, strip_url_credentials

from ._cache import CompletionCache, cache_key

log = logging.getLogger(__name__)


class OpenAICriticSettings(BaseModel):
    """The ``critic:`` section of a run config for ``name: openai`` (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    base_url: str | None = None  # None: the OpenAI API
    # Name of the environment variable holding the key. null: the endpoint needs no key (local vLLM).
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(2048, ge=1)
    cache: bool = True
    cache_dir: str | None = None  # None: ~/.cache/srt/critic_cache (the pipeline sets one per run dir)
    price_per_1k_prompt: float | None = Field(None, ge=0)
    price_per_1k_completion: float | None = Field(None, ge=0)
    system_prompt: str | None = None
    extra_body: dict[str, Any] | None = None
    # Backoff: attempt k waits uniform(0, min(backoff_max_s, backoff_base_s * 2**k)) ("full jitter").
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    retry_after_max_s: float = Field(300.0, ge=0)  # cap on a server-sent Retry-After
    progress: bool = True


class _MalformedCompletion(Exception):
    """A 200 response that is not a usable chat completion (no choices / no message)."""


def parse_retry_after(headers: Mapping[str, str] | None, cap_s: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), capped."""
    if not headers:
        return None
    seconds: float | None = None
    retry_after_ms = headers.get("retry-after-ms")
    if retry_after_ms:
        try:
            seconds = float(retry_after_ms) / 1000.0
        except ValueError:
            seconds = None
    value = headers.get("retry-after")
    if seconds is None and value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap_s)


def _classify(err: Exception) -> tuple[bool, Mapping[str, str] | None, str]:
    """(retryable, response headers, short reason) for an exception raised by one API call."""
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        retryable = status in (408, 409, 429) or status >= 500
        return retryable, err.response.headers, f"HTTP {status}: {err.message}"
    if isinstance(err, openai.APITimeoutError):
        return True, None, "request timed out"
    if isinstance(err, openai.APIConnectionError):
        return True, None, f"connection error: {err.__cause__ or err}"
    if isinstance(err, (openai.APIResponseValidationError, _MalformedCompletion, json.JSONDecodeError)):
        # The client raises a bare JSONDecodeError for a garbled 200 body.
        return True, None, f"malformed response: {err}"
    return False, None, f"{type(err).__name__}: {err}"


def api_key_from_env(settings: OpenAICriticSettings) -> str:
    """The API key from the environment variable ``settings.api_key_env`` ("EMPTY" without one: OpenAI-compatible
    local servers accept any key), registered as a secret so that no error message, log line, record or manifest of
    this process holds it."""
    api_key = os.environ[settings.api_key_env].strip() if settings.api_key_env else "EMPTY"
    if api_key != "EMPTY":
        register_secrets([api_key])
    return api_key


def endpoint_url(base_url: str | None) -> str:
    """The endpoint the official client sends to, as the client resolves it (``base_url``, else
    ``OPENAI_BASE_URL``, else the OpenAI API), without credentials or a trailing slash: part of the
    cache key (answers from one server are never served for another) and of the provenance."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return strip_url_credentials(url).rstrip("/")


class OpenAICritic:
    name = "openai"
    settings_model = OpenAICriticSettings
    operational_settings = (
        "max_concurrency",
        "max_retries",
        "timeout_s",
        "cache",
        "cache_dir",
        "backoff_base_s",
        "backoff_max_s",
        "retry_after_max_s",
        "progress",
        "price_per_1k_prompt",
        "price_per_1k_completion",
    )

    @classmethod
    def check_settings(cls, settings: OpenAICriticSettings) -> None:
        """Plan check (no request is sent): the key variable is set, no credentials in the URL."""
        from srt.secrets import find_secrets

        if settings.api_key_env is not None and not os.environ.get(settings.api_key_env, "").strip():
            raise CriticError(
                f"critic 'openai': environment variable {settings.api_key_env} is not set or empty; export the API "
                "key there (or set critic.api_key_env to the variable that holds it, or null for a server without keys)"
            )
        leaked = find_secrets({"base_url": settings.base_url, "extra_body": settings.extra_body})
        if leaked:
            raise CriticError(f"critic 'openai': {', '.join(leaked)} holds a credential; use api_key_env instead")

    @classmethod
    def estimate(cls, settings: dict[str, Any], prompts: Sequence[str]) -> dict[str, Any]:
        """Upper bounds before a run (``srt-train estimate``): prompt tokens at about 4 characters a token
        (OpenAI's rule of thumb for English; no tokenizer download), ``max_tokens`` per completion, and
        the configured prices (cost None when none are set)."""
        s = OpenAICriticSettings.model_validate(dict(settings))

        def count(text: str) -> int:
            return len(text) // 4 + 1

        overhead = 4 + (count(s.system_prompt) + 4 if s.system_prompt else 0)  # chat message framing
        prompt_tokens = sum(count(p) + overhead for p in prompts)
        completion_tokens = s.max_tokens * len(prompts)
        priced = s.price_per_1k_prompt is not None or s.price_per_1k_completion is not None
        cost = (
            prompt_tokens * (s.price_per_1k_prompt or 0) + completion_tokens * (s.price_per_1k_completion or 0)
        ) / 1000
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": round(cost, 4) if priced else None,
        }

    def __init__(self, settings: OpenAICriticSettings):
        self.settings = settings
        self.check_settings(settings)
        api_key = api_key_from_env(settings)
        self._client = openai.OpenAI(
            base_url=settings.base_url, api_key=api_key, max_retries=0, timeout=settings.timeout_s
        )
        self._cache = CompletionCache(settings.cache_dir) if settings.cache else None
        # Everything that changes the completion for a given prompt; the key is never part of it.
        self._cache_settings = {
            "base_url": endpoint_url(settings.base_url),
            "model": settings.model,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "system_prompt": settings.system_prompt,
            "extra_body": settings.extra_body,
            "template_hash": TEMPLATE_HASH,
        }
        self._rng = random.Random()
        self._abort = threading.Event()  # set on interruption: no new attempts, no backoff waits
        self._lock = threading.Lock()
        self._stats = {
            "requests": 0,  # HTTP attempts sent, retries included
            "completions": 0,  # successful completions received
            "cache_hits": 0,
            "retries": 0,
            "failures": 0,  # requests that failed after all retries (or at once on a 4xx)
            "empty_completions": 0,
            "truncated": 0,  # finish_reason == "length"
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        }

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> OpenAICritic:
        # ``policy`` is for critics that use the model being trained; an API critic ignores it.
        try:
            parsed = OpenAICriticSettings.model_validate(dict(settings or {}))
        except ValidationError as err:
            raise CriticError(f"critic 'openai': invalid settings: {validation_problems(err)}") from None
        return cls(parsed)

    # -- provenance and accounting -------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": self.name,
            "model": s.model,
            "base_url": endpoint_url(s.base_url),
            "api_key_env": s.api_key_env,  # the variable's name, never its value
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "system_prompt": s.system_prompt,
            "extra_body": s.extra_body,
            "max_retries": s.max_retries,
            "max_concurrency": s.max_concurrency,
            "timeout_s": s.timeout_s,
            "price_per_1k_prompt": s.price_per_1k_prompt,
            "price_per_1k_completion": s.price_per_1k_completion,
            "template_version": TEMPLATE_VERSION,
            "template_hash": TEMPLATE_HASH,
        }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._stats)

    def _count(self, **increments: float) -> None:
        with self._lock:
            for name, value in increments.items():
                self._stats[name] += value

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        s = self.settings
        return (prompt_tokens / 1000.0) * (s.price_per_1k_prompt or 0.0) + (completion_tokens / 1000.0) * (
            s.price_per_1k_completion or 0.0
        )

    # -- the protocol ------------------------------------------------------------------------

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        # mode="score" uses the same prompt: the refinement sits in the response slot.
        prompts = [render_critic_prompt(r.instruction, r.response, r.context) for r in requests]
        replies: list[CritiqueReply | None] = [None] * len(prompts)
        pending: dict[str, list[int]] = {}  # cache key -> request indices (identical prompts sent once)
        for i, prompt in enumerate(prompts):
            key = cache_key(self._cache_settings, prompt)
            entry = self._cache.get(key) if self._cache is not None else None
            if entry is not None:
                replies[i] = self._cached_reply(entry)
            else:
                pending.setdefault(key, []).append(i)

        if pending:
            workers = min(self.settings.max_concurrency, len(pending))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="srt-openai-critic") as pool:
                futures = {pool.submit(self._complete, prompts[idx[0]], key): key for key, idx in pending.items()}
                bar = tqdm(
                    as_completed(futures),
                    total=len(futures),
                    desc=f"critic {self.settings.model}",
                    unit="req",
                    disable=not self.settings.progress,
                )
                try:
                    for future in bar:
                        self._fill(replies, pending[futures[future]], future.result())
                except BaseException:
                    # Interrupted (SIGTERM/SIGINT): send nothing more, let the requests in flight end
                    # (their replies are cached, so a resumed run does not pay for them again).
                    self._abort.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._abort.clear()
                    raise
        return replies  # type: ignore[return-value]  # every slot is filled above

    @staticmethod
    def _fill(replies: list, indices: list[int], reply: CritiqueReply) -> None:
        first, *repeats = indices
        replies[first] = reply
        for i in repeats:  # an identical prompt in the same batch: sent (and paid) once
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "cached": True, "deduplicated": True}
            replies[i] = CritiqueReply(text=reply.text, error=reply.error, usage=usage)

    def _cached_reply(self, entry: dict[str, Any]) -> CritiqueReply:
        self._count(cache_hits=1)
        prompt_tokens, completion_tokens = entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": 0.0,  # nothing paid now; what the call cost when it was made:
            "paid_cost_usd": entry.get("cost_usd", self._cost(prompt_tokens, completion_tokens)),
            "paid_at": entry.get("created"),
            "cached": True,
            "attempts": 0,
        }
        return CritiqueReply(text=entry["text"], usage=usage)

    def _complete(self, prompt: str, key: str) -> CritiqueReply:
        s = self.settings
        messages = [{"role": "system", "content": s.system_prompt}] if s.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        reason = ""
        attempts = 0
        started = time.monotonic()
        for attempt in range(s.max_retries + 1):
            attempts += 1
            self._count(requests=1)
            try:
                completion = self._client.chat.completions.create(
                    model=s.model,
                    messages=messages,
                    temperature=s.temperature,
                    max_tokens=s.max_tokens,
                    extra_body=s.extra_body,
                )
                if not getattr(completion, "choices", None) or completion.choices[0].message is None:
                    raise _MalformedCompletion("no choices in the completion")
            except Exception as err:  # noqa: BLE001 - classified below; unknown errors re-raise
                retryable, headers, reason = _classify(err)
                reason = scrub_text(reason)  # servers may echo the key back
                if not retryable and not isinstance(err, openai.OpenAIError):
                    raise  # a bug or a bad setting, not an API failure
                if not retryable or attempt == s.max_retries:
                    break
                delay = parse_retry_after(headers, s.retry_after_max_s)
                if delay is None:
                    delay = self._rng.uniform(0.0, min(s.backoff_max_s, s.backoff_base_s * 2**attempt))
                log.warning("critic %s: %s; retry %d/%d in %.2fs", s.model, reason, attempt + 1, s.max_retries, delay)
                self._count(retries=1)
                if self._abort.wait(delay):
                    break
                continue
            return self._success(completion, key, attempts, time.monotonic() - started)

        self._count(failures=1)
        log.error("critic %s: giving up after %d attempt(s): %s", s.model, attempts, reason)
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "cached": False, "attempts": attempts}
        return CritiqueReply(text=None, error=f"{reason} (after {attempts} attempt(s))", usage=usage)

    def _success(self, completion: Any, key: str, attempts: int, latency_s: float) -> CritiqueReply:
        choice = completion.choices[0]
        # A JSON "\ud800" escape decodes to a lone surrogate, which no file or tokenizer accepts.
        text = (choice.message.content or "").encode("utf-8", "replace").decode("utf-8")
        text = scrub_known(text)  # a completion that repeats the key must not carry it into the cache
        prompt_tokens = int(getattr(completion.usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(completion.usage, "completion_tokens", 0) or 0)
        cost = self._cost(prompt_tokens, completion_tokens)
        empty = not text.strip()
        truncated = choice.finish_reason == "length"
        self._count(
            completions=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            empty_completions=int(empty),
            truncated=int(truncated),
        )
        if empty:
            log.warning("critic %s: empty completion (counted; the parser will reject it)", self.settings.model)
        # An empty reply is likely a server hiccup: leave it uncached so a rerun asks again.
        if self._cache is not None and not empty:
            self._cache.put(
                key,
                {
                    "text": text,
                    "model": completion.model,
                    "finish_reason": choice.finish_reason,
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "cost_usd": cost,
                    "created": time.time(),
                },
            )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
            "cached": False,
            "attempts": attempts,
            "latency_s": round(latency_s, 4),
            "finish_reason": choice.finish_reason,
        }
        return CritiqueReply(text=text, usage=usage)
