"""The critic protocol: what every critic plugin (entry-point group ``srt.critics``) implements.

A critic reads (instruction, response) pairs and returns raw text in the critic output format of
:mod:`srt.critic_template` (weaknesses, suggestions, ``Overall Score: [[n]]``, then
``### Improved Response``). Parsing and filtering are the core's job, so every critic, API or
local, is held to the same parser.

A plugin class is built with ``Cls.from_config(settings, policy=None)``:
  * ``settings``: the ``critic:`` mapping of the run config minus ``name`` (never holds secrets; an
    API critic gets the *name* of the environment variable that holds its key);
  * ``policy``: the in-process :class:`srt.generation.Generator` of the model being trained, passed
    only to critics that declare ``needs_policy = True`` (the ``self`` critic of stage 2).

What a plugin declares (class attributes, all optional), so the core never tests plugin names:
  * ``settings_model``: a pydantic model of its settings; the run plan validates ``settings`` with it
    before any model is loaded (unknown keys, wrong types, missing required ones);
  * ``check_settings(parsed)``: a classmethod for checks beyond types (an API key variable that is
    set, a model that can be found); raises :class:`srt.errors.CriticError`;
  * ``needs_policy``: it critiques with the model being trained (default False);
  * ``needs_reference``: it needs a gold answer per instruction (``fields.reference``; default False);
  * ``operational_settings``: settings that change how it runs, not what it writes (concurrency,
    retries, device): changing them never invalidates a finished step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass
class CritiqueRequest:
    id: str
    instruction: str
    response: str
    # Gold answer or solution, for data that has one (used by the ``reference`` critic).
    reference: str | None = None
    # A conversation's earlier turns ({"role", "content"} dicts; a system message too), empty for a
    # single instruction; render_critic_prompt(instruction, response, context) shows them to the critic.
    context: list[dict[str, str]] = field(default_factory=list)
    # "critique": feedback + improved response. "score": re-score a refinement placed in the
    # response slot; only the feedback and its score are needed (kept separate from the critique
    # call on purpose: a critic that sees its own feedback inflates the score).
    mode: Literal["critique", "score"] = "critique"


@dataclass
class CritiqueReply:
    text: str | None  # raw critic output, or None when the call failed
    error: str | None = None  # why the call failed after all retries (counted as a critic error)
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens, cost_usd, cached


@runtime_checkable
class Critic(Protocol):
    """The required members; the optional declarations are in the module docstring."""

    name: str

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> Critic: ...

    def describe(self) -> dict[str, Any]:
        """Provenance for records and manifests: name, model, settings. Never secrets."""
        ...

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        """One reply per request, in order. Failures are replies with ``error`` set, not exceptions."""
        ...
