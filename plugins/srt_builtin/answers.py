"""The final numeric answer of a text: the one extractor of the built-in math plugins.

The ``reference`` critic (its rubric) and the ``word_problems`` benchmark (its exact match) both
read answers here, so a critique and a score can never disagree about which number a response gave.

Final answer of a text: the first number after the *last* answer marker (``####``, ``answer is``,
``answer:``, ``\\boxed{``); without a marker (or a marker followed by no number), the last number in
the text. Numbers may carry thousands commas, decimals, a sign, ``$`` or ``%``, or be a fraction
``a/b``; they are compared exactly as fractions (``1,234`` == ``1234.0``).

Gold answers (GSM8K style, ``...worked steps...\\n#### 42``): the number on the last ``####`` line,
else the final answer of the text (a bare ``42`` works too).

Worked steps (:func:`calculation_steps`): every written calculation ``a op b [op c ...] = r``
(``+ - * x × / ÷``, ``$`` and thousands commas allowed) with the value it claims and its true value,
which the ``reference`` critic compares with the gold solution's steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# A number not glued to a word or another number: sign (ASCII or Unicode minus) only when it is
# not a binary minus ("48-24" gives 48 and 24), thousands commas, decimals, an optional fraction.
# The look-behind is ASCII-only so numbers inside CJK text ("共72个") still count.
NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.])(?P<sign>(?<![0-9)])[-\u2212])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?:/(?P<den>\d+)(?![\d.]))?"
)
# Answer markers; the first number after the last one is the final answer.
MARKER_RE = re.compile(r"####|\\boxed\{|\banswer\b(?:\*\*)?\s*(?:is\b|:|=)", re.IGNORECASE)
GOLD_ANSWER_LINE_RE = re.compile(r"^[ \t]*####[ \t]*(?P<answer>[^\n]*)$", re.MULTILINE)
_CALCULATION_RE = re.compile(r"\d\s*[-+*/×÷x=]\s*[-\u2212]?\$?\d")


def parse_number(text: str) -> Fraction | None:
    """The value of the first number in ``text`` (``"$1,234.50"`` -> 1234.5), or None."""
    m = NUMBER_RE.search(text)
    return _value(m) if m else None


def _value(m: re.Match) -> Fraction:
    value = Fraction(m.group("int").replace(",", "") + (m.group("frac") or ""))
    if m.group("den") and int(m.group("den")) != 0:
        value /= int(m.group("den"))
    return -value if m.group("sign") else value


def format_number(value: Fraction) -> str:
    """Canonical form: ``1234``, ``-5``, ``2.5``, ``1/3`` (no commas)."""
    if value.denominator == 1:
        return str(value.numerator)
    # Terminating decimals print as decimals, others stay fractions.
    denominator = value.denominator
    for p in (2, 5):
        while denominator % p == 0:
            denominator //= p
    if denominator == 1:
        return f"{float(value):.10f}".rstrip("0").rstrip(".")
    return f"{value.numerator}/{value.denominator}"


@dataclass
class AnswerAnalysis:
    answer: Fraction | None  # the final numeric answer, None when the text has no number
    explicit: bool  # stated after an answer marker ("The answer is 72", "#### 72")
    shows_work: bool  # a calculation, or a number and 3+ words, outside the final-answer statement
    words: int


def analyze_answer(text: str) -> AnswerAnalysis:
    """Find the final answer of ``text`` (module doc) and whether reasoning is shown around it."""
    words = len(text.split())
    answer_match, explicit, statement_start = None, False, None
    markers = list(MARKER_RE.finditer(text))
    if markers:
        m = NUMBER_RE.search(text, markers[-1].end())
        if m is not None:
            answer_match, explicit, statement_start = m, True, markers[-1].start()
    if answer_match is None:
        numbers = list(NUMBER_RE.finditer(text))
        if not numbers:
            return AnswerAnalysis(None, False, False, words)
        answer_match, statement_start = numbers[-1], numbers[-1].start()
    # The work is everything outside the final-answer statement (a check may follow it).
    work = text[:statement_start] + " " + text[answer_match.end() :]
    shows_work = bool(_CALCULATION_RE.search(work)) or (NUMBER_RE.search(work) is not None and len(work.split()) >= 3)
    return AnswerAnalysis(_value(answer_match), explicit, shows_work, words)


def final_answer(text: str | None) -> Fraction | None:
    """The final numeric answer of ``text`` (None when it holds no number)."""
    return analyze_answer(text).answer if text else None


def gold_answer(reference: str) -> Fraction | None:
    """The gold final answer: after ``####`` when present, else the final answer of the text."""
    lines = list(GOLD_ANSWER_LINE_RE.finditer(reference))
    if lines:
        value = parse_number(lines[-1].group("answer"))
        if value is not None:
            return value
    return analyze_answer(reference).answer


def same_number(a: Fraction | None, b: Fraction | None, rel_tolerance: float = 0.0) -> bool:
    """``a`` equals ``b`` within ``rel_tolerance`` relative to ``max(1, |b|)`` (0: exactly); None is never equal."""
    if a is None or b is None:
        return False
    return abs(a - b) <= Fraction(rel_tolerance) * max(1, abs(b))


# ------------------------------------------------------------------------------------- worked steps

# One operand of a written calculation: optional sign, ``$``, thousands commas, decimals.
_STEP_NUMBER = r"[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_STEP_OP = r"[-+*/×÷xX\u2212]"
# ``a op b [op c ...] = r``: operands not glued to a word or another number (``4x - 7`` is no step).
STEP_RE = re.compile(
    rf"(?<![\w.$])(?P<lhs>{_STEP_NUMBER}(?:\s*{_STEP_OP}\s*{_STEP_NUMBER})+)\s*=\s*(?P<rhs>{_STEP_NUMBER})(?![\d/])"
)
_STEP_TOKEN_RE = re.compile(rf"(?P<num>{_STEP_NUMBER})|(?P<op>{_STEP_OP})")
_OPS = {"+": "+", "-": "-", "\u2212": "-", "*": "*", "x": "*", "X": "*", "×": "*", "/": "/", "÷": "/"}


@dataclass
class Step:
    """One written calculation ``a op b = r`` of a text (``ops`` normalized to ``+ - * /``)."""

    text: str  # as written, e.g. "26 + 17 = 43"
    operands: list[Fraction]
    ops: list[str]
    result: Fraction  # the value the text claims
    value: Fraction | None  # the true value of the left side (None: division by zero)

    @property
    def correct(self) -> bool:
        return self.value is not None and self.value == self.result


def _step_number(token: str) -> Fraction:
    sign = token[0] in "-\u2212"
    value = Fraction(token.lstrip("-\u2212").lstrip("$").replace(",", ""))
    return -value if sign else value


def evaluate(operands: list[Fraction], ops: list[str]) -> Fraction | None:
    """The value of ``operands[0] ops[0] operands[1] ...`` with ``*`` and ``/`` before ``+`` and ``-``."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op in "*/":
            if op == "/" and x == 0:
                return None
            terms[-1] = terms[-1] * x if op == "*" else terms[-1] / x
        else:
            terms.append(x)
            signs.append(op)
    total = terms[0]
    for op, x in zip(signs, terms[1:]):
        total = total + x if op == "+" else total - x
    return total


def calculation_steps(text: str) -> list[Step]:
    """The written calculations ``a op b = r`` of ``text`` in order; a chain ``a + b = c - d = e``
    gives two steps (``c - d = e`` starts at the first result). GSM8K ``<<...>>`` annotations are ignored."""
    text = re.sub(r"<<[^<>]*>>", "", text or "")
    steps, pos = [], 0
    while (m := STEP_RE.search(text, pos)) is not None:
        operands, ops, expect_number = [], [], True
        for t in _STEP_TOKEN_RE.finditer(m.group("lhs")):
            if expect_number and t.group("num"):
                operands.append(_step_number(t.group("num")))
                expect_number = False
            elif t.group("op"):
                ops.append(_OPS[t.group("op")])
                expect_number = True
            elif t.group("num"):  # "5 -3": a signed number right after a number is "- 3"
                ops.append("-" if t.group("num")[0] in "-\u2212" else "+")
                operands.append(abs(_step_number(t.group("num"))))
        if len(operands) == len(ops) + 1:
            steps.append(
                Step(
                    text=re.sub(r"\s+", " ", m.group(0)).strip(),
                    operands=operands,
                    ops=ops,
                    result=_step_number(m.group("rhs")),
                    value=evaluate(operands, ops),
                )
            )
        pos = m.start("rhs")  # the result may start the next link of a chain
    return steps


def numbers_in(text: str) -> list[Fraction]:
    """Every number of ``text`` (``NUMBER_RE``), in order."""
    return [_value(m) for m in NUMBER_RE.finditer(text or "")]
