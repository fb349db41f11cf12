"""The model being trained critiques itself (SRT stage 2).

A stage-1 SRT model writes response, feedback and refinement in one assistant turn
(:func:`srt.critic_template.render_srt_turn`). To critique a response it is given the instruction
as the user message and an assistant turn already holding ``response + "\\n\\n### Feedback\\n"``
(:func:`srt.critic_template.self_critique_prefix`); it continues with its feedback,
``### Improved Response`` and the refinement. That continuation is exactly the critic output
format, so the core parses it like any other critic's reply. Temperature 0 by default (paper).

``mode="score"``: the refinement goes in the response slot of the prefix and generation stops at
the ``### Improved Response`` header; the model's own score of its refinement is all that is kept.

``from_config(settings, policy)``: ``policy`` is the in-process :class:`srt.generation.Generator`
of the stage-1 model (the pipeline passes it; any object with the same ``chat`` method, such as a
generation-server client, works too); a ``model`` setting loads one instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import self_critique_prefix
from srt.errors import CriticError
from srt.generation import Generator

from .hf_critic import (
    LocalCriticSettings,
    check_local_settings,
    describe_settings,
    generate_replies,
    load_generator,
    model_identity,
    parse_settings,
)


class SelfCritic:
    name = "self"
    settings_model = LocalCriticSettings
    operational_settings = ("device", "batch_size")
    needs_policy = True  # the pipeline passes the model being trained (unless settings.model names one)

    @classmethod
    def check_settings(cls, settings: LocalCriticSettings) -> None:
        check_local_settings(cls.name, settings, require_model=False)

    def __init__(self, settings: LocalCriticSettings, generator: Any):
        self.settings = settings
        self.generator = generator
        self.model_name, self.revision = model_identity(generator, settings.model)

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> SelfCritic:
        parsed = parse_settings(cls.name, settings)
        if parsed.model:  # an explicit stage-1 model folder wins over the in-process policy
            return cls(parsed, load_generator(cls.name, parsed))
        if policy is None:
            raise CriticError(
                "critic 'self' needs the stage-1 model: run it where the pipeline passes the policy "
                "(stage 2), or set critic.model to the stage-1 model folder"
            )
        if not callable(getattr(policy, "chat", None)):
            raise CriticError(
                f"critic 'self': policy must be an srt.generation.Generator (or have its chat method), "
                f"got {type(policy).__name__}"
            )
        if isinstance(policy, Generator) and parsed.batch_size not in (None, policy.batch_size):
            # Same weights, another batch size: a new wrapper, not a second copy of the model.
            policy = Generator(policy.model, policy.tokenizer, batch_size=parsed.batch_size)
        return cls(parsed, policy)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_name,
            "revision": self.settings.revision or self.revision,
            **describe_settings(self.settings, self.generator),
        }

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        # In "score" mode r.response holds the refinement to be re-scored.
        return generate_replies(
            self.name,
            self.generator,
            self.settings,
            requests,
            # The conversation as it was trained: the earlier turns, then the instruction.
            user_message=lambda r: (
                [*r.context, {"role": "user", "content": r.instruction}] if r.context else r.instruction
            ),
            assistant_prefix=lambda r: self_critique_prefix(r.response),
        )
