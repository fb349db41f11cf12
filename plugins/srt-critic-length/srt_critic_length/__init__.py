"""An example third-party srt critic: judges a response by its length and structure only.

It is deterministic and offline, which makes it a handy baseline and a worked example of the
critic protocol (:mod:`srt.critic`). It does not read the content for correctness, and it cannot
write new content: its "improved response" only fixes what it can fix honestly (it trims an overlong
answer at a sentence boundary, drops a trailing half sentence, splits a wall of text into
paragraphs). A too-short answer is returned unchanged, so its refinement never scores higher and
srt's filter drops that example, as it should.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import TEMPLATE_HASH, render_critique
from srt.errors import CriticError

__version__ = "0.1.0"

# Split after . ! ? followed by spaces (not newlines, so lists and paragraphs keep their lines).
_SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]+")
_TERMINAL = (".", "!", "?", '"', "'", ")", "`", "]")
_PARAGRAPH_SENTENCES = 3


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


class LengthSettings(BaseModel):
    """The ``critic:`` settings of ``name: length``; srt validates a run's settings with this model
    before anything runs (``srt-train validate``)."""

    model_config = ConfigDict(extra="forbid")
    target_words: int = Field(120, ge=1, description="The answer length the critic considers right.")
    min_ratio: float = Field(0.5, gt=0, le=1, description="Shorter than min_ratio * target_words is too short.")
    max_ratio: float = Field(2.0, ge=1, description="Longer than max_ratio * target_words is too long.")
    block_words: int = Field(150, ge=1, description="A longer answer without a line break is a wall of text.")


class LengthCritic:
    name = "length"
    settings_model = LengthSettings

    def __init__(self, target_words: int = 120, min_ratio: float = 0.5, max_ratio: float = 2.0, block_words: int = 150):
        if target_words < 1 or not 0 < min_ratio <= 1 <= max_ratio or block_words < 1:
            raise CriticError(
                "critic 'length': need target_words >= 1, 0 < min_ratio <= 1 <= max_ratio and block_words >= 1 "
                f"(got target_words={target_words}, min_ratio={min_ratio}, max_ratio={max_ratio}, "
                f"block_words={block_words})"
            )
        self.target_words = target_words
        self.min_words = max(1, round(min_ratio * target_words))
        self.max_words = round(max_ratio * target_words)
        self.block_words = block_words  # a longer answer with no line break is a "wall of text"
        self.settings = {
            "target_words": target_words,
            "min_ratio": min_ratio,
            "max_ratio": max_ratio,
            "block_words": block_words,
        }

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> LengthCritic:
        known = {"target_words", "min_ratio", "max_ratio", "block_words"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise CriticError(f"critic 'length': unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": f"srt-critic-length {__version__}",
            "template_hash": TEMPLATE_HASH,
            **self.settings,
        }

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        return [CritiqueReply(text=self._critique_one(r)) for r in requests]

    # -- the heuristic -------------------------------------------------------------------------

    def judge(self, response: str) -> tuple[list[str], list[str], int]:
        """(weaknesses, suggestions, score 1..10) for one response."""
        text = response.strip()
        n = len(text.split())
        if n == 0:
            return ["The response is empty."], ["Answer the instruction."], 1
        weaknesses: list[str] = []
        suggestions: list[str] = []
        score = 10
        if n < self.min_words:
            shortfall = 1 - n / self.min_words
            score -= 1 + round(6 * shortfall)
            weaknesses.append(f"The response is too short: {n} words, against a target of about {self.target_words}.")
            suggestions.append(
                "Expand it: explain the reasoning, add an example, and cover every part of the instruction."
            )
        elif n > self.max_words:
            excess = n / self.max_words - 1
            score -= 1 + min(4, round(3 * excess))
            weaknesses.append(f"The response is too long: {n} words, against a target of about {self.target_words}.")
            suggestions.append(f"Cut repetition and side remarks; stay under about {self.max_words} words.")
        if not text.endswith(_TERMINAL):
            score -= 2
            weaknesses.append("The response stops in the middle of a sentence.")
            suggestions.append("Finish or remove the last, incomplete sentence.")
        if n > self.block_words and "\n" not in text:
            score -= 1
            weaknesses.append("The response is one unbroken block of text.")
            suggestions.append("Split it into short paragraphs or a list.")
        if not weaknesses:
            weaknesses.append("No length or structure problems found (this critic does not check content).")
            suggestions.append("None for length or structure; check the content with a content-aware critic.")
        return weaknesses, suggestions, max(1, min(10, score))

    def improve(self, response: str) -> str:
        """Fix only what length/structure rules can fix without inventing content."""
        text = response.strip()
        n = len(text.split())
        if n <= self.max_words and text.endswith(_TERMINAL) and (n <= self.block_words or "\n" in text):
            return text  # nothing this critic can fix (a short answer needs content it cannot write)
        sentences = _sentences(text)
        # Drop a trailing half sentence when there is a complete one before it.
        if len(sentences) > 1 and not sentences[-1].endswith(_TERMINAL):
            sentences = sentences[:-1]
        # Keep whole sentences up to the length limit (at least the first one).
        kept, words = [], 0
        for sentence in sentences:
            count = len(sentence.split())
            if kept and words + count > self.max_words:
                break
            kept.append(sentence)
            words += count
        if kept and len(kept[0].split()) > self.max_words:  # a single giant sentence: cut its words
            kept = [" ".join(kept[0].split()[: self.max_words])]
        if kept and not kept[-1].endswith(_TERMINAL):
            kept[-1] += "."
        if "\n" in text or words <= self.block_words:
            return " ".join(kept)
        paragraphs = [kept[i : i + _PARAGRAPH_SENTENCES] for i in range(0, len(kept), _PARAGRAPH_SENTENCES)]
        return "\n\n".join(" ".join(p) for p in paragraphs)

    def _critique_one(self, request: CritiqueRequest) -> str:
        weaknesses, suggestions, score = self.judge(request.response)
        improved = None if request.mode == "score" else self.improve(request.response)
        return render_critique(
            weaknesses="\n".join(f"- {w}" for w in weaknesses),
            suggestions="\n".join(f"- {s}" for s in suggestions),
            score=score,
            improved_response=improved,
        )
