"""Segments: the named text pieces of a training sequence, each flagged trained or masked.

Loss masks are built from these spans, never by searching the rendered text: a sequence is a list
of ``(name, text, train)`` segments, each tokenized on its own and concatenated, so the mask is
exactly the trained segments' tokens. This file decides what the pieces are (the SRT turn of
stage 1, the completions of stage 2, the ablations); :mod:`srt.data.tokenization` turns them into ids.
"""

from __future__ import annotations

from srt.config import DPOConfig, SFTConfig
from srt.critic_template import FEEDBACK_SEPARATOR, render_feedback, srt_segments
from srt.data.chat_format import ChatFormat
from srt.records import FeedbackRecord, PreferencePair

Segment = tuple[str, str, bool]  # (name, text, train)

# Rendered by the chat template, so special-token strings in them are meant (BOS, EOS, turn
# markers); every other segment is data, where "</s>" is plain text.
TEMPLATE_SEGMENTS = ("prompt", "eos")


class Unusable(Exception):
    """A record that cannot make a training example; the message is the counted reason."""


def sft_segments(record: FeedbackRecord, config: SFTConfig, chat: ChatFormat) -> list[Segment]:
    """The segments of one SFT sequence; raises :class:`Unusable` with the reason.

    ``prompt`` (masked), ``response`` (trained unless ``config.mask_response``), ``feedback`` and
    ``refinement`` (trained), ``eos`` (the template's end of turn, trained); ``config.ablation``
    leaves parts of the feedback out, or trains the refinement alone (``refinement_only``).
    """
    ablation = config.ablation
    if not record.refinement or not record.refinement.strip():
        raise Unusable("no refinement")
    prompt = ("prompt", chat.prompt(record.instruction, record.context), False)
    end = ("eos", chat.end_of_turn, True)
    if ablation == "refinement_only":  # plain SFT on the refined answer
        return [prompt, ("refinement", record.refinement, True), end]
    if not record.response.strip():
        raise Unusable("empty response")

    if ablation == "no_feedback":
        feedback_text = None
    else:
        fb = record.feedback
        if fb is None:
            raise Unusable("no feedback")
        if ablation != "no_weaknesses" and not fb.weaknesses.strip():
            raise Unusable("empty weaknesses")
        if ablation != "no_suggestions" and not fb.suggestions.strip():
            raise Unusable("empty suggestions")
        if ablation != "no_score" and fb.score is None:
            raise Unusable("no score")
        feedback_text = render_feedback(
            None if ablation == "no_weaknesses" else fb.weaknesses,
            None if ablation == "no_suggestions" else fb.suggestions,
            None if ablation == "no_score" else fb.score,
        )
    train = {"response": not config.mask_response, "feedback": True, "refinement": True}
    pieces = srt_segments(record.response, feedback_text, record.refinement)
    return [prompt, *((name, text, train[name]) for name, text in pieces), end]


def dpo_segments(pair: PreferencePair, config: DPOConfig, chat: ChatFormat) -> tuple[str, list[Segment], list[Segment]]:
    """(prompt text, chosen segments, rejected segments) of one pair; raises :class:`Unusable`.

    Each completion is followed by what ``config.completion_end`` says is trained after it: the
    end of turn (``eos``), the SRT feedback header (``feedback``) or nothing (``none``).
    """
    if not pair.chosen.strip():
        raise Unusable("empty chosen")
    if not pair.rejected.strip():
        raise Unusable("empty rejected")
    if pair.chosen == pair.rejected:
        raise Unusable("chosen == rejected")
    ends = {
        "eos": [("eos", chat.end_of_turn, True)],
        "feedback": [("completion", FEEDBACK_SEPARATOR, True)],
        "none": [],
    }
    end = ends[config.completion_end]
    return (
        chat.prompt(pair.prompt, pair.context),
        [("completion", pair.chosen, True), *end],
        [("completion", pair.rejected, True), *end],
    )
