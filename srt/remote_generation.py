"""Generation at scale through an OpenAI-compatible server (vLLM, TGI): ``generation.backend: openai``.

:class:`RemoteGenerator` has the interface of :class:`srt.generation.Generator` (``chat``,
``generate``, ``render_chat``, returning :class:`~srt.generation.GenerationOutput`), so the
pipeline, the self critic and inference swap it in. Settings (``generation.server``)::

    base_url: http://localhost:8000/v1   # the server's OpenAI-compatible root
    model: null                          # served model name; default: the model path (vLLM's default)
    api_key_env: null                    # name of the env var holding the key; null: no key (local server)
    max_concurrency: 16                  # requests in flight
    timeout_s: 600                       # per request
    max_retries: 5                       # 429, 5xx, timeouts, dropped connections (exponential backoff, Retry-After)

Every call goes through ``/v1/completions`` with the prompt rendered **locally** by the model's
chat template (only the tokenizer is loaded). Chat completions cannot continue a partly written
assistant turn portably (the self critic needs that: ``assistant_prefixes``), and rendering
everything the same way keeps the prompts identical to in-process generation. A leading BOS that
the server's tokenizer adds itself is dropped from the text so it is not doubled.

Sampling maps to ``temperature``, ``top_p``, ``max_tokens``, ``stop`` and a per-prompt ``seed``
derived like the in-process generator's random streams (from the run seed and the prompt key), so
a resumed run asks for the same samples. Retries use the ``openai`` client's own backoff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from srt.errors import ConfigError, SrtError, validation_problems
from srt.generation import ChatGeneration, GenerationOutput, SamplingConfig, _row_seed


class RemoteGenerationError(SrtError):
    """The generation server failed a request after all retries (or refused it)."""


class ServerSettings(BaseModel):
    """``generation.server``: see the module docstring."""

    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(min_length=1)
    model: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(5, ge=0)


class RemoteGenerator(ChatGeneration):
    def __init__(self, tokenizer: Any, settings: ServerSettings | dict[str, Any], *, model_name: str | None = None):
        if not isinstance(settings, ServerSettings):
            settings = _parse_settings(settings)
        from openai import OpenAI

        api_key = "EMPTY"  # vLLM / TGI without authentication accept any key
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env, "")
            if not api_key:
                raise ConfigError(
                    f"generation.server.api_key_env: environment variable {settings.api_key_env} is not set"
                )
        self.settings = settings
        self.tokenizer = tokenizer
        self.model_name = settings.model or model_name
        if not self.model_name:
            raise ConfigError("generation.server.model is not set (the model name the server serves)")
        self.batch_size = settings.max_concurrency  # what callers size their chunks by
        self.client = OpenAI(
            base_url=settings.base_url, api_key=api_key, timeout=settings.timeout_s, max_retries=settings.max_retries
        )
        self._drop_bos = _tokenizer_adds_bos(tokenizer)

    @classmethod
    def from_config(cls, server: dict[str, Any], model_path: str) -> RemoteGenerator:
        """``server``: the ``generation.server`` section; ``model_path``: the local model (or hub id)
        whose tokenizer renders the prompts and whose name is the default served model name."""
        from srt.models import load_tokenizer

        settings = _parse_settings(server)
        return cls(load_tokenizer(model_path), settings, model_name=str(model_path))

    # -- same interface as srt.generation.Generator (chat/render_chat come from ChatGeneration) ----

    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        desc: str = "generate",
        keys: Sequence[str] | None = None,
    ) -> list[GenerationOutput]:
        """Complete already-rendered prompts, ``max_concurrency`` requests at a time, in input order.

        ``keys`` name each prompt's random stream (as in :meth:`srt.generation.Generator.generate`);
        by default the prompt text and its occurrence number, so repeated prompts differ.
        """
        if keys is not None and len(keys) != len(prompts):
            raise ConfigError(f"got {len(keys)} keys for {len(prompts)} prompts")
        if keys is None:
            seen: dict[str, int] = {}
            keys = []
            for prompt in prompts:
                seen[prompt] = seen.get(prompt, -1) + 1
                keys.append(f"{prompt}\x00{seen[prompt]}")
        outputs: list[GenerationOutput | None] = [None] * len(prompts)
        new_tokens, start = 0, time.perf_counter()
        with (
            ThreadPoolExecutor(max_workers=self.settings.max_concurrency, thread_name_prefix="srt-remote") as pool,
            tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True) as bar,
        ):
            futures = {
                pool.submit(self._complete, prompt, sampling, _row_seed(sampling.seed, key)): i
                for i, (prompt, key) in enumerate(zip(prompts, keys))
            }
            try:
                for future in as_completed(futures):
                    out = outputs[futures[future]] = future.result()
                    new_tokens += out.num_new_tokens
                    bar.update(1)
                    bar.set_postfix(tok_per_s=f"{new_tokens / max(time.perf_counter() - start, 1e-9):.1f}")
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # do not keep sending after a failure
                raise
        return outputs  # type: ignore[return-value]

    # -- one request -------------------------------------------------------------------------------

    def _complete(self, prompt: str, sampling: SamplingConfig, seed: int) -> GenerationOutput:
        import openai

        bos = self.tokenizer.bos_token
        text_prompt = prompt[len(bos) :] if self._drop_bos and prompt.startswith(bos) else prompt
        try:
            response = self.client.completions.create(
                model=self.model_name,
                prompt=text_prompt,
                max_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=seed,
                stop=list(sampling.stop) or None,
            )
        except openai.APIStatusError as exc:
            raise RemoteGenerationError(
                f"generation server {self.settings.base_url} answered HTTP {exc.status_code} for model "
                f"{self.model_name!r} (429/5xx are retried {self.settings.max_retries} times): {_message(exc)}"
            ) from None
        except openai.APIError as exc:  # connection refused/dropped, timeout
            raise RemoteGenerationError(
                f"generation server {self.settings.base_url}: {type(exc).__name__} after {self.settings.max_retries} "
                f"retries: {exc}"
            ) from None
        choice = response.choices[0]
        text = choice.text or ""
        usage = response.usage
        num_prompt = (
            usage.prompt_tokens if usage else len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        )
        num_new = usage.completion_tokens if usage else len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        # Servers cut stop strings from the text; cut here too in case one is configured to keep them.
        stop_at = min((p for p in (text.find(s) for s in sampling.stop) if p >= 0), default=None)
        if stop_at is not None:
            return GenerationOutput(text[:stop_at], num_prompt, num_new, "stop")
        if choice.finish_reason == "length":
            return GenerationOutput(text, num_prompt, num_new, "length")
        # "stop" is either EOS or a stop string; vLLM says which in stop_reason (None for EOS).
        stop_reason = getattr(choice, "stop_reason", None)
        return GenerationOutput(text, num_prompt, num_new, "stop" if isinstance(stop_reason, str) else "eos")


def _parse_settings(server: dict[str, Any]) -> ServerSettings:
    try:
        return ServerSettings.model_validate(dict(server or {}))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, "generation.server")) from None


def _tokenizer_adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` (what a server does with a text prompt) starts with BOS by itself."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc)
