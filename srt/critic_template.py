"""The critic prompt, the critic-output parser, and the SRT assistant-turn format.

Critic output format (what a critic writes after the prompt's ``### Feedback`` header)::

    Weaknesses:
    <weaknesses>

    Suggestions:
    <suggestions>

    Overall Score: [[<score>]]

    ### Improved Response
    <improved response>

Parsing rules (:func:`parse_critique`):
  * Header variants are accepted in any case, with extra spaces, markdown ``#`` / ``**`` / ``__``
    decoration, a list number, and an optional colon: ``Weaknesses:``, ``**Weaknesses**:``,
    ``### Weaknesses``, ``## improved response``, ``**Improved Response:**``. Text on the same line
    after a ``Header:`` colon belongs to the section. A leading echoed ``### Feedback`` is dropped.
  * The text is split at the improved-response header: before it is the feedback part, after it
    the improved response. The header is the *first line that is the header alone*: optional
    markdown ``#``s, ``**`` / ``__`` decoration, an optional list number (``4. Improved Response``),
    an optional colon, and nothing else on the line. A bullet item (``- Improved response: ...``,
    e.g. inside the weaknesses) or a line with text after the header (``Improved response: see
    below.``) is not that header, so it neither cuts the feedback short nor puts commentary and a
    literal header into the refinement. Only when no line is the header alone, the first inline
    ``Improved Response: <text>`` line that is no list item (bullet or number) and comes after the
    (first) score line is the header, and ``<text>`` starts the improved response.
  * A score is ``Overall Score: [[n]]`` (any case, spaces inside the brackets allowed, ``[[n/10]]``
    also accepted). The bracket content must be a whole integer, so ``10`` is never read as ``1``
    nor ``1`` as ``10``. When the feedback part holds several scores, **the last one wins**: the
    final verdict comes last. Scores inside the improved response are ignored. No bracketed score
    -> ``missing_score``; a non-integer (``7.5``, ``seven``) -> ``invalid_score``; outside 1..10 ->
    ``score_out_of_range``.
  * Failures are checked in this order: empty, weaknesses, suggestions, score, improved response.

SRT assistant turn (what an SRT model writes in one assistant turn)::

    <response>\\n\\n### Feedback\\n<feedback>\\n\\n### Improved Response\\n<refinement>

built from :data:`FEEDBACK_SEPARATOR` and :data:`REFINEMENT_SEPARATOR` by :func:`srt_segments`, which
returns the pieces separately so loss masks are built from spans, never by searching strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from srt.io import text_sha256

TEMPLATE_VERSION = "srt-critic-v1"

# Our own wording of the paper's four-section critic prompt. Placeholders: {instruction}, {response}.
CRITIC_TEMPLATE = """\
You are reviewing how well an AI assistant answered a user. Read the instruction and the response, \
then write careful, honest feedback.

### Instruction
{instruction}

### Response
{response}

### Requirements
Write your feedback in exactly this layout:
1. A line "Weaknesses:" followed by the weaknesses of the response: factual or logical errors, \
missing information, parts that ignore the instruction, and anything unclear or unhelpful. Be specific.
2. A line "Suggestions:" followed by concrete, actionable suggestions that would fix those weaknesses.
3. A line "Overall Score: [[n]]", where n is a whole number from 1 (very poor) to 10 (excellent) \
rating the response as a whole.
4. A line "### Improved Response" followed by a complete new response to the instruction that \
applies your suggestions. Write only the response itself there, with no commentary about it.

### Feedback
"""

# sha256 of "<version>\n<template>", first 16 hex digits: changes whenever the wording or the
# version changes, so records and caches made with another prompt are told apart.
TEMPLATE_HASH = text_sha256(f"{TEMPLATE_VERSION}\n{CRITIC_TEMPLATE}", 16)

FEEDBACK_HEADER = "### Feedback"
REFINEMENT_HEADER = "### Improved Response"
# Separators of the SRT assistant turn: a blank line, then the header on its own line.
FEEDBACK_SEPARATOR = f"\n\n{FEEDBACK_HEADER}\n"
REFINEMENT_SEPARATOR = f"\n\n{REFINEMENT_HEADER}\n"

SCORE_MIN, SCORE_MAX = 1, 10


def render_critic_prompt(instruction: str, response: str, context=()) -> str:
    """The critic prompt; it ends right after the ``### Feedback`` header line. ``context``: the turns
    before the instruction in a conversation (``{role, content}``), shown above the last user turn."""
    if context:
        turns = "\n".join(
            f"{m['role'] if isinstance(m, dict) else m.role}: {m['content'] if isinstance(m, dict) else m.content}"
            for m in context
        )
        instruction = f"(The conversation so far)\n{turns}\n\n(The user's last message, to be answered)\n{instruction}"
    return CRITIC_TEMPLATE.format(instruction=instruction, response=response)


def render_feedback(weaknesses: str | None, suggestions: str | None, score: int | None) -> str:
    """The feedback part only, with just the given parts (ablations drop some); "" if none."""
    parts = []
    if weaknesses is not None:
        parts.append(f"Weaknesses:\n{weaknesses}")
    if suggestions is not None:
        parts.append(f"Suggestions:\n{suggestions}")
    if score is not None:
        parts.append(f"Overall Score: [[{score}]]")
    return "\n\n".join(parts)


def render_critique(weaknesses: str, suggestions: str, score: int, improved_response: str | None = None) -> str:
    """The canonical critic output (improved-response part omitted when None)."""
    text = render_feedback(weaknesses, suggestions, score)
    if improved_response is not None:
        text += REFINEMENT_SEPARATOR + improved_response
    return text


@dataclass
class ParsedCritique:
    weaknesses: str
    suggestions: str
    score: int
    improved_response: str | None
    raw: str

    def feedback_text(self) -> str:
        """The feedback part re-rendered in the canonical format."""
        return render_feedback(self.weaknesses, self.suggestions, self.score)


@dataclass
class ParseFailure:
    # "empty", "missing_weaknesses", "missing_suggestions", "missing_score", "invalid_score",
    # "score_out_of_range", "missing_improved_response", "missing_feedback" (SRT output only)
    reason: str
    message: str
    raw: str


def _header_re(keyword: str) -> re.Pattern:
    deco = r"(?:\*\*|__)?"
    return re.compile(
        # (?![^\W_]): the keyword ends at a non-letter, "_" included (``__Improved Response__``).
        rf"^[ \t]*(?:#{{1,6}}[ \t]*|(?P<number>\d{{1,2}}[.)])[ \t]*|(?P<bullet>[-*])[ \t]+)?"
        rf"{deco}[ \t]*{keyword}(?![^\W_])"
        rf"[ \t]*{deco}[ \t]*(?P<colon>:)?[ \t]*{deco}[ \t]*(?P<rest>[^\n]*)$",
        re.IGNORECASE | re.MULTILINE,
    )


_WEAKNESSES_RE = _header_re(r"weakness(?:es)?")
_SUGGESTIONS_RE = _header_re(r"(?:actionable[ \t]+)?suggestions?")
_IMPROVED_RE = _header_re(r"improved[ \t]+response")
_FEEDBACK_RE = _header_re(r"feedback")
_SCORE_RE = re.compile(
    r"overall[ \t]+score[ \t]*(?:\*\*|__)?[ \t]*:?[ \t]*(?:\*\*|__)?[ \t]*\[\[(?P<value>[^\[\]\n]*)\]\]",
    re.IGNORECASE,
)
_INT_RE = re.compile(r"(?P<n>[+-]?\d+)(?:[ \t]*/[ \t]*10)?")


def _find_header(pattern: re.Pattern, text: str, inline_text: bool = True) -> re.Match | None:
    """First real header line: bare (``### Weaknesses``) or, if ``inline_text``, with a colon and
    text after it (``Weaknesses: ...``); a sentence that merely starts with the word is not one."""
    for m in pattern.finditer(text):
        if not m.group("rest").strip() or (inline_text and m.group("colon")):
            return m
    return None


def _strip_feedback_echo(text: str) -> str:
    """Drop ``### Feedback`` header lines the critic repeated at the start of its output."""
    while True:
        stripped = text.lstrip()
        m = _FEEDBACK_RE.match(stripped)
        if not m or m.group("rest").strip():
            return text
        text = stripped[m.end() :]


def _find_improved(text: str) -> re.Match | None:
    """The improved-response header line (module doc): the first line that is the header alone (no
    bullet, nothing after it); failing that, the first inline ``Improved Response: <text>`` line
    that is no list item and starts after the first score line."""
    matches = list(_IMPROVED_RE.finditer(text))
    for m in matches:
        if not m.group("rest").strip() and not m.group("bullet"):
            return m
    score = _SCORE_RE.search(text)
    if score is None:
        return None
    for m in matches:
        if m.start() >= score.end() and m.group("colon") and not m.group("bullet") and not m.group("number"):
            return m
    return None


def _split_improved(text: str) -> tuple[str, str | None]:
    """(feedback part, improved response or None when there is no improved-response header)."""
    m = _find_improved(text)
    if m is None:
        return text, None
    return text[: m.start()], text[m.start("rest") :]


def _score_line_start(text: str, m: re.Match) -> int:
    # Section text ends at the score's line when only decoration (``**``, ``-``) precedes it there.
    line_start = text.rfind("\n", 0, m.start()) + 1
    return line_start if not text[line_start : m.start()].strip(" \t*#_-") else m.start()


def _score_from(feedback_part: str, raw: str) -> int | ParseFailure:
    matches = list(_SCORE_RE.finditer(feedback_part))
    if not matches:
        return ParseFailure("missing_score", "no 'Overall Score: [[n]]' in the feedback", raw)
    value = matches[-1].group("value").strip()  # the last verdict wins
    m = _INT_RE.fullmatch(value)
    if not m:
        return ParseFailure("invalid_score", f"score [[{value}]] is not a whole number", raw)
    score = int(m.group("n"))
    if not SCORE_MIN <= score <= SCORE_MAX:
        return ParseFailure("score_out_of_range", f"score {score} is outside {SCORE_MIN}..{SCORE_MAX}", raw)
    return score


def parse_score(text: str | None) -> int | ParseFailure:
    """Only the score of the feedback part (for re-scoring calls)."""
    raw = text or ""
    if not raw.strip():
        return ParseFailure("empty", "the critic output is empty", raw)
    feedback_part, _ = _split_improved(_strip_feedback_echo(raw))
    return _score_from(feedback_part, raw)


def parse_critique(text: str | None, require_improved_response: bool = True) -> ParsedCritique | ParseFailure:
    """Parse critic output into weaknesses, suggestions, score and improved response (module doc)."""
    raw = text or ""
    if not raw.strip():
        return ParseFailure("empty", "the critic output is empty", raw)
    feedback_part, improved = _split_improved(_strip_feedback_echo(raw))

    # Section boundaries: each section runs until the next header or score line.
    weak = _find_header(_WEAKNESSES_RE, feedback_part)
    sugg = _find_header(_SUGGESTIONS_RE, feedback_part)
    boundaries = [m.start() for m in (weak, sugg) if m] + [
        _score_line_start(feedback_part, m) for m in _SCORE_RE.finditer(feedback_part)
    ]

    def section(m: re.Match | None) -> str:
        start = m.start("rest")
        end = min((b for b in boundaries if b > m.start()), default=len(feedback_part))
        return feedback_part[start:end].strip()

    if weak is None or not section(weak):
        return ParseFailure("missing_weaknesses", "no (non-empty) 'Weaknesses:' section", raw)
    if sugg is None or not section(sugg):
        return ParseFailure("missing_suggestions", "no (non-empty) 'Suggestions:' section", raw)
    score = _score_from(feedback_part, raw)
    if isinstance(score, ParseFailure):
        return score
    improved = improved.strip() if improved is not None else None
    if not improved:
        improved = None
        if require_improved_response:
            return ParseFailure("missing_improved_response", f"no (non-empty) '{REFINEMENT_HEADER}' section", raw)
    return ParsedCritique(section(weak), section(sugg), score, improved, raw)


# ---------------------------------------------------------------------------------------------
# SRT assistant turn


def srt_segments(response: str, feedback_text: str | None, refinement: str | None) -> list[tuple[str, str]]:
    """Ordered (name, text) pieces whose concatenation is the SRT assistant turn.

    Names are "response", "feedback", "refinement"; a part given as None is left out (ablations).
    The separators (with their headers) belong to the segment they introduce.
    """
    segments = [("response", response)]
    if feedback_text is not None:
        segments.append(("feedback", FEEDBACK_SEPARATOR + feedback_text))
    if refinement is not None:
        segments.append(("refinement", REFINEMENT_SEPARATOR + refinement))
    return segments


render_srt_segments = srt_segments  # name used in the project brief


def render_srt_turn(response: str, feedback_text: str | None, refinement: str | None) -> str:
    return "".join(text for _, text in srt_segments(response, feedback_text, refinement))


def strip_partial_separator(text: str) -> str:
    """Drop a feedback separator that generation cut off mid-way (``...\\n\\n### Fee`` at the length
    limit): a response that stops there must not carry half a header into the critique prompt."""
    sep = FEEDBACK_SEPARATOR.rstrip("\n")
    for k in range(len(sep) - 1, 2, -1):  # at least "\n\n#"
        if text.endswith(sep[:k]):
            return text[: len(text) - k]
    return text


def self_critique_prefix(response: str) -> str:
    """Assistant prefix for self-critique: the response, then the feedback header line, so the
    model continues with its feedback."""
    return response + FEEDBACK_SEPARATOR


@dataclass
class SrtOutput:
    response: str
    feedback: ParsedCritique | None
    refinement: str | None
    failure: ParseFailure | None  # why feedback or refinement could not be parsed, if so

    @property
    def answer(self) -> str:
        """The refinement; the initial response when there is none."""
        return self.refinement if self.refinement is not None else self.response

    @property
    def used_fallback(self) -> bool:
        return self.refinement is None


def parse_srt_output(text: str) -> SrtOutput:
    """Split an SRT model's assistant output into response, feedback and refinement.

    The response ends at the first ``### Feedback`` header (or, if the model skipped it, at the
    first ``Weaknesses:`` header). A refinement found after the improved-response header is kept
    even when the feedback part fails to parse (``failure`` then says why), and when there is no
    feedback at all (``response -> ### Improved Response -> refinement``, what a model trained with
    ``sft.ablation: no_feedback`` writes; ``failure`` is then ``missing_feedback``).
    """
    # Only a header alone on its line splits: a response may well contain "Feedback: ...".
    split = _find_header(_FEEDBACK_RE, text, inline_text=False)
    if split is not None:
        response, rest = text[: split.start()], text[split.start("rest") :]
    else:
        split = _find_header(_WEAKNESSES_RE, text)
        if split is None:
            failure = ParseFailure("missing_feedback", f"no '{FEEDBACK_HEADER}' section", text)
            # A turn without feedback (the ``no_feedback`` ablation trains response -> refinement):
            # the text after an improved-response header line alone is the refinement.
            improved = next(
                (m for m in _IMPROVED_RE.finditer(text) if not m.group("rest").strip() and not m.group("bullet")), None
            )
            if improved is not None and text[improved.end() :].strip():
                return SrtOutput(text[: improved.start()].strip(), None, text[improved.end() :].strip(), failure)
            return SrtOutput(text.strip(), None, None, failure)
        response, rest = text[: split.start()], text[split.start() :]

    _, refinement = _split_improved(rest)
    refinement = refinement.strip() if refinement is not None else None
    parsed = parse_critique(rest, require_improved_response=True)
    if isinstance(parsed, ParseFailure):
        return SrtOutput(response.strip(), None, refinement or None, parsed)
    return SrtOutput(response.strip(), parsed, parsed.improved_response, None)
