"""Critic run by a local transformers model (any chat model: Tulu, Llama-3-Instruct, Qwen...).

The critic prompt of :mod:`srt.critic_template` goes in as the user message through the critic
model's own chat template; the model's answer is the raw critic output that the core parses.
Requests are generated in batches by :class:`srt.generation.Generator` (left padding, sorted by
length, progress bar). Defaults follow the paper's critic: temperature 0, up to 2,048 new tokens.

``mode="score"`` sends the same prompt (the refinement in the response slot) but stops at the
``### Improved Response`` header: only the score is needed, so the refinement is not generated
again. A prompt longer than the model's context is a reply with ``error`` set.

The generation helpers here are shared with the ``self`` critic (:mod:`.self_critic`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import REFINEMENT_HEADER, TEMPLATE_HASH, TEMPLATE_VERSION, render_critic_prompt
from srt.errors import CriticError, validation_problems
from srt.generation import Generator, SamplingConfig

log = logging.getLogger(__name__)


class LocalCriticSettings(BaseModel):
    """Generation settings shared by the ``hf`` and ``self`` critics (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # folder, hub id or "tiny" (srt.models.resolve_model_path)
    revision: str | None = None  # hub revision to load
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto: cuda when available, else cpu
    batch_size: int | None = Field(None, ge=1)  # None: 8 (hf), the policy's own (self)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1)
    seed: int = 0
    system_prompt: str | None = None


def parse_settings(critic_name: str, settings: dict[str, Any] | None) -> LocalCriticSettings:
    try:
        return LocalCriticSettings.model_validate(dict(settings or {}))
    except ValidationError as err:
        raise CriticError(f"critic {critic_name!r}: invalid settings: {validation_problems(err)}") from None


def load_generator(critic_name: str, settings: LocalCriticSettings) -> Generator:
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return Generator.from_pretrained(
            settings.model,
            dtype=settings.dtype,
            device=device,
            batch_size=settings.batch_size or 8,
            revision=settings.revision,
        )
    except OSError as err:
        raise CriticError(f"critic {critic_name!r}: cannot load model {settings.model!r}: {err}") from err


def model_identity(generator: Any, configured: str | None) -> tuple[str | None, str | None]:
    """(model name or path, revision) for provenance; the revision is best effort."""
    from srt.models import model_revision

    config = getattr(getattr(generator, "model", None), "config", None)
    name = configured or getattr(config, "_name_or_path", None) or getattr(generator, "model_path", None) or None
    try:
        revision = model_revision(name) if name else None
    except Exception:  # noqa: BLE001 - provenance must never break a run (e.g. an unknown hub id offline)
        revision = None
    return name, revision


def sampling_for(settings: LocalCriticSettings, mode: str) -> SamplingConfig:
    # Re-scoring needs only the feedback and its score: stop before the refinement.
    stop = [REFINEMENT_HEADER] if mode == "score" else []
    return SamplingConfig(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        stop=stop,
    )


def generate_replies(
    critic_name: str,
    generator: Any,
    settings: LocalCriticSettings,
    requests: Sequence[CritiqueRequest],
    user_message: Callable[[CritiqueRequest], str],
    assistant_prefix: Callable[[CritiqueRequest], str] | None = None,
) -> list[CritiqueReply]:
    """Chat-generate one reply per request (grouped by mode, batched), in request order.

    ``generator`` is an in-process :class:`Generator`, or any object with the same ``chat`` method
    (e.g. a client of a generation server), used as is.
    """
    replies: list[CritiqueReply | None] = [None] * len(requests)
    for mode in ("critique", "score"):
        indices = [i for i, r in enumerate(requests) if r.mode == mode]
        if not indices:
            continue
        prefixes = [assistant_prefix(requests[i]) for i in indices] if assistant_prefix else None
        if not isinstance(generator, Generator):
            outputs = generator.chat(
                [user_message(requests[i]) for i in indices],
                sampling_for(settings, mode),
                assistant_prefixes=prefixes,
                system_prompt=settings.system_prompt,
            )
            for i, out in zip(indices, outputs):
                replies[i] = _reply(out)
            continue
        context = getattr(generator.model.config, "max_position_embeddings", None)
        prompts = generator.render_chat([user_message(requests[i]) for i in indices], prefixes, settings.system_prompt)
        lengths = [len(ids) for ids in generator.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        todo = []
        for i, prompt, n in zip(indices, prompts, lengths):
            if context is not None and n >= context:
                replies[i] = CritiqueReply(
                    text=None,
                    error=f"prompt of {n} tokens does not fit the critic model's context of {context} tokens",
                    usage={"prompt_tokens": n, "completion_tokens": 0, "cost_usd": 0.0},
                )
            else:
                todo.append((i, prompt))
        if not todo:
            continue
        try:
            outputs = generator.generate(
                [p for _, p in todo],
                sampling_for(settings, mode),
                desc=f"critic {critic_name} ({mode})",
                keys=[f"{requests[i].id}\x00{mode}" for i, _ in todo],
            )
        except torch.OutOfMemoryError as err:
            raise CriticError(
                f"critic {critic_name!r}: out of GPU memory with batch_size {generator.batch_size}; "
                "lower critic.batch_size or critic.max_new_tokens"
            ) from err
        for (i, _), out in zip(todo, outputs):
            replies[i] = _reply(out)
    return replies  # type: ignore[return-value]  # every slot is filled above


def _reply(out: Any) -> CritiqueReply:
    usage = {
        "prompt_tokens": getattr(out, "num_prompt_tokens", 0),
        "completion_tokens": getattr(out, "num_new_tokens", 0),
        "cost_usd": 0.0,
        "cached": False,
        "finish_reason": getattr(out, "finish_reason", None),
    }
    return CritiqueReply(text=out.text, usage=usage)


def describe_settings(settings: LocalCriticSettings, generator: Any) -> dict[str, Any]:
    model = getattr(generator, "model", None)
    dtype = getattr(model, "dtype", None)
    return {
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else settings.dtype,
        "device": str(getattr(generator, "device", settings.device)),
        "batch_size": getattr(generator, "batch_size", settings.batch_size),
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_new_tokens": settings.max_new_tokens,
        "seed": settings.seed,
        "system_prompt": settings.system_prompt,
        "template_version": TEMPLATE_VERSION,
        "template_hash": TEMPLATE_HASH,
    }


def check_local_settings(critic_name: str, settings: LocalCriticSettings, *, require_model: bool) -> None:
    from srt.models import check_model_reference

    if settings.model:
        check_model_reference(settings.model, revision=settings.revision, what=f"critic {critic_name!r}: model")
    elif require_model:
        raise CriticError(f"critic {critic_name!r}: set critic.model (a model folder, hub id, or 'tiny')")


class HFCritic:
    name = "hf"
    settings_model = LocalCriticSettings
    operational_settings = ("device", "batch_size")

    @classmethod
    def check_settings(cls, settings: LocalCriticSettings) -> None:
        check_local_settings(cls.name, settings, require_model=True)

    def __init__(self, settings: LocalCriticSettings, generator: Generator | None = None):
        if generator is None and not settings.model:
            raise CriticError("critic 'hf': set critic.model (a model folder, hub id, or 'tiny')")
        self.settings = settings
        self.generator = generator if generator is not None else load_generator(self.name, settings)
        self.model_name, self.revision = model_identity(self.generator, settings.model)

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> HFCritic:
        # ``policy`` is the model being trained; this critic runs its own model and ignores it.
        return cls(parse_settings(cls.name, settings))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_name,
            "revision": self.settings.revision or self.revision,
            **describe_settings(self.settings, self.generator),
        }

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        # Both modes use the same prompt; in "score" mode the refinement sits in the response slot.
        return generate_replies(
            self.name,
            self.generator,
            self.settings,
            requests,
            user_message=lambda r: render_critic_prompt(r.instruction, r.response, r.context),
        )
