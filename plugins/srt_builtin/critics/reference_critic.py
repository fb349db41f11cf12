"""Critic for data with gold answers (math word problems): offline, deterministic, no model.

Each request carries ``reference``: a gold solution in GSM8K style (``...worked steps...\\n#### 42``)
or just the final number. The critic extracts the response's final numeric answer, compares it
with the gold answer, and writes feedback in the critic output format of
:mod:`srt.critic_template`, with the gold solution (cleaned into a worked solution ending
``The answer is N.``) as the improved response.

The final answer of a text and the gold answer are read by :mod:`srt_builtin.answers`, the
extractor the ``word_problems`` benchmark scores with, so the critic's verdict and the benchmark's
exact match agree.

Diagnosis. Each ``a op b = c`` calculation of the response (:func:`srt_builtin.answers.calculation_steps`)
is checked: its arithmetic, and whether its result is one of the quantities of the gold solution's
steps (a match needs the same result and a shared operand). Walking the steps in order, the first
wrong one is named with its kind: an **arithmetic slip** (``26 + 17 = 42``), a **wrong quantity**
(an operand the gold step does not use, and the quantity it needed, quoted from the question: "the 5
in 'gives 5 to a friend'"), a **wrong operation** (the gold step's quantities, another operation),
an **extra step** past the answer; with no wrong step, a **missing step** (what the first unreached
gold step does, in words, without its result). The correct steps before the error are praised; a
right answer is praised for its correct steps and told what is missing (an unshown step, an implicit
answer). Wording varies between records and is fixed for one: it is drawn from a RNG seeded by the
record id. With ``reveal_answer: false`` the feedback never writes the gold final answer, except
where the response itself wrote that number (its own step, or a quantity of the question).

Rubric (``Overall Score``); a right final answer always scores 7-10 and a wrong one 1-6, so the
verdict is the ``word_problems`` benchmark's exact match:

====  =======================================================================
10    right final answer, stated explicitly, every gold step's quantity shown, no wrong step
 9    right, but a gold step is not shown, or the answer is only implicit
 8    right, but a written step has an arithmetic slip (or implicit and a step unshown)
 7    right final answer without reasoning (a bare number)
 6    wrong, but the steps reach gold quantities before the error: a slip late in the work, a
      missing last step, an extra step past the answer, or a final statement that ignores the steps
 5    wrong: an arithmetic slip in the first step, or a wrong quantity / operation after correct steps
 4    wrong: the first step is already a wrong quantity or operation, or correct arithmetic that
      reaches no gold quantity; or reasoning in words that reaches a gold intermediate
 3    wrong final answer with no reasoning, or words that reach no gold quantity
 2    no numeric final answer, but some attempt (5+ words)
 1    no numeric final answer and (almost) nothing else
====  =======================================================================

"Reasoning shown" means the text outside the final-answer statement holds at least one number and
at least three words (or a calculation such as ``48 + 24``). The cleaned gold solution therefore
scores 10, so as a refinement it beats any wrong response and ties a correct, fully worked one. A
bare-number gold becomes ``The answer is N.``, which scores 7. Without a gold solution with steps
(a bare-number reference) only the arithmetic of each step is checked.

Measured on the 96 stage-1 responses of ``runs/demo/stage1`` (``reveal_answer: false``):
reference-v1 wrote 44 distinct feedback texts, 5 once numbers are masked, and scored 86 of the 96
``[[4]]``; reference-v2 writes 96 distinct texts (93 with numbers masked), scores spread over
3/4/5/6 (23/28/21/14) for wrong answers and 7/9/10 (1/6/3) for right ones.

``mode="score"`` scores the given text by the same rubric and writes only the feedback part.
A request without a reference, or with a reference that holds no number, is a reply with
``error`` set (counted as a critic error by the pipeline), never an exception.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from srt.critic import CritiqueReply, CritiqueRequest
from srt.critic_template import TEMPLATE_HASH, TEMPLATE_VERSION, render_critique
from srt.errors import CriticError
from srt_builtin.answers import (
    GOLD_ANSWER_LINE_RE,
    NUMBER_RE,
    Step,
    analyze_answer,
    calculation_steps,
    format_number,
    gold_answer,
    numbers_in,
    same_number,
)

NO_REFERENCE_ERROR = "reference critic needs a gold answer"

_GSM8K_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" calculator annotations


def clean_gold_solution(reference: str, answer: Fraction) -> str:
    """The gold solution as a clean worked solution ending ``The answer is N.``."""
    text = _GSM8K_CALCULATOR_RE.sub("", reference)
    text = GOLD_ANSWER_LINE_RE.sub("", text).strip()
    final = f"The answer is {format_number(answer)}."
    if not text or NUMBER_RE.fullmatch(text.rstrip(".").strip().lstrip("$")):
        return final  # a bare-number reference ("42")
    last_line = text.splitlines()[-1]
    last = analyze_answer(last_line)
    if last.explicit and last.answer == answer:
        return text  # already ends with its own answer statement
    return f"{text}\n{final}"


class ReferenceCriticSettings(BaseModel):
    """The ``critic:`` section for ``name: reference`` (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid")

    rel_tolerance: float = Field(
        1e-6, ge=0, description="Answers within this relative tolerance count as equal (1e-6: only rounding noise)"
    )
    # For SRT training data: the model later writes this feedback itself, without the gold answer,
    # and a model trained on "the correct answer is N" learns to invent an N and copy it.
    reveal_answer: bool = Field(
        True,
        description="Name the gold answer in the feedback of a wrong response; false for SRT training data",
    )


@dataclass
class RubricResult:
    score: int
    weaknesses: list[str]
    suggestions: list[str]
    # What the diagnosis found (module doc, "Diagnosis"): right_full, right_partial, right_implicit,
    # right_slip, right_bare, arithmetic_slip, wrong_quantity, wrong_operation, missing_step,
    # final_mismatch, unlocated, no_steps, bare_wrong, no_answer.
    kind: str = ""


_OP_VERB = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_OP_NOUN = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
_SENTENCE_RE = re.compile(r"[^.?!;\n]+")


class _Wording:
    """Deterministic choice among wordings: seeded by the record id, so a record's feedback is
    always the same while different records read differently."""

    def __init__(self, seed: str):
        self.rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big"))

    def __call__(self, *options: str, **values: Any) -> str:
        return self.rng.choice(options).format(**values)


def given_quantities(instruction: str | None) -> dict[Fraction, str]:
    """The numbers the question states, each with a short quote of where (``'gives 5 to a friend'``)."""
    given: dict[Fraction, str] = {}
    for sentence in _SENTENCE_RE.finditer(instruction or ""):
        words = sentence.group(0).split()
        for i, word in enumerate(words):
            m = NUMBER_RE.search(word)
            if m is None or m.start() > 1:  # "$9" counts, "x9" does not
                continue
            value = _number_value(m)
            if value not in given:
                given[value] = " ".join(words[max(0, i - 3) : i + 4]).strip(",:")
    return given


def _number_value(m: re.Match) -> Fraction:
    value = Fraction(m.group("int").replace(",", "") + (m.group("frac") or ""))
    if m.group("den") and int(m.group("den")) != 0:
        value /= int(m.group("den"))
    return -value if m.group("sign") else value


def _diff(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    """Multiset ``a - b``."""
    rest = list(b)
    out = []
    for x in a:
        if x in rest:
            rest.remove(x)
        else:
            out.append(x)
    return out


@dataclass
class _Context:
    gold: Fraction
    given: dict[Fraction, str]
    gold_steps: list[Step]
    reveal: bool
    resp_steps: list[Step]

    def num(self, value: Fraction) -> str:
        return format_number(value)

    def describe(self, value: Fraction, before: int | None = None, earlier: list[Step] | None = None) -> str:
        """A quantity as the reader can find it: the response's step that found it, an earlier gold step
        (``earlier``: the gold steps whose result it is), or a quote from the question; the gold final
        answer is never written when it may not be revealed."""
        upto = self.resp_steps if before is None else self.resp_steps[:before]
        found_by = next((k for k, st in enumerate(upto) if st.correct and st.result == value), None)
        earlier = earlier or []
        if earlier or value not in self.given:
            if found_by is not None:
                return f"the {self.num(value)} from step {found_by + 1}"
            if earlier:
                return f"the result of {earlier[-1].text.split('=')[0].strip()}"
        if value in self.given:
            return f"the {self.num(value)} in '{self.given[value]}'"
        if value == self.gold and not self.reveal:
            return "the quantity the question asks for"
        if any(g.result == value for g in self.gold_steps):
            return f"the intermediate result {self.num(value)}"
        return self.num(value)

    def step_plan(self, g: Step, before: int | None = None) -> str:
        """What a gold step does, in words, without its result: 'subtract the 5 in ... from the 43 from step 1'."""
        j = next((i for i, x in enumerate(self.gold_steps) if x is g), 0)
        pool = list(self.gold_steps[:j])  # earlier gold results, each used by one operand (left to right)
        described = []
        for x in g.operands:
            from_step = next((p for p in reversed(pool) if p.result == x), None)
            if from_step is not None:
                pool.remove(from_step)
            described.append(self.describe(x, before, [from_step] if from_step else None))
        if len(g.operands) == 2:
            a, b = described
            op = g.ops[0]
            if op == "+":
                return f"add {a} and {b}"
            if op == "-":
                return f"subtract {b} from {a}"
            if op == "*":
                return f"multiply {a} by {b}"
            return f"divide {a} by {b}"
        quantities = ", ".join(described)
        return f"combine {quantities} ({', '.join(_OP_NOUN[o] for o in g.ops)})"


def _shares(st: Step, g: Step) -> bool:
    return len(_diff(g.operands, st.operands)) < len(g.operands)


def _best_gold_match(st: Step, gold_steps: list[Step], reached: set[int]) -> int | None:
    """The unreached gold step the response step most likely meant: most shared operands, then the earliest."""
    best, best_key = None, None
    for j, g in enumerate(gold_steps):
        if j in reached:
            continue
        shared = len(g.operands) - len(_diff(g.operands, st.operands))
        key = (shared, -j)
        if best_key is None or key > best_key:
            best, best_key = j, key
    return best


def grade(
    text: str,
    gold: Fraction,
    rel_tolerance: float = 1e-6,
    reveal_answer: bool = True,
    *,
    reference: str | None = None,
    instruction: str | None = None,
    seed: str = "",
) -> RubricResult:
    """Score ``text`` against the gold answer by the rubric of the module doc, with feedback that names
    what is right and the first thing that is wrong. ``reference`` (the gold solution) gives the gold
    steps, ``instruction`` the given quantities; without them only the arithmetic of each step is checked.
    The verdict (score >= 7) depends on the final answer alone."""
    say = _Wording(seed)
    a = analyze_answer(text)
    gold_s = format_number(gold)
    if a.answer is None:
        weak = [
            say(
                "The response gives no numeric final answer, so the question is left unanswered.",
                "There is no numeric final answer: the response never says how many.",
                "The response ends without a numeric final answer, so the question is not answered.",
            )
        ]
        given = given_quantities(instruction)
        if given and a.words >= 5:
            quantities = ", ".join(f"{format_number(v)} ('{q}')" for v, q in list(given.items())[:3])
            weak.append(say("It never turns the given quantities ({q}) into a calculation.", q=quantities))
        sugg = [
            say(
                "Work through the problem step by step, computing each intermediate quantity.",
                "Write each calculation out as 'a op b = c', one quantity at a time.",
            ),
            "End with the final answer as a number, in the form 'The answer is N.'.",
        ]
        return RubricResult(2 if a.words >= 5 else 1, weak, sugg, "no_answer")

    got = a.answer
    got_s = format_number(got)
    gold_steps = [g for g in calculation_steps(reference or "") if g.correct]  # trust only sound gold arithmetic
    steps = calculation_steps(text)
    ctx = _Context(gold, given_quantities(instruction), gold_steps, reveal_answer, steps)
    stated = gold_s if reveal_answer else "N"

    # Walk the response's steps: which gold quantities they reach, and the first one that goes wrong.
    reached: set[int] = set()
    right_steps: list[int] = []
    first_error: tuple[int, str] | None = None  # (step index, kind)
    reached_before_error = 0
    for k, st in enumerate(steps):
        done = bool(gold_steps) and len(reached) == len(gold_steps)  # every gold quantity already reached
        if not st.correct:
            if first_error is None:
                first_error, reached_before_error = (k, "extra_step" if done else "arithmetic_slip"), len(reached)
            continue
        # A gold step is matched by its result and at least one shared operand (not a coincidence).
        candidates = [j for j, g in enumerate(gold_steps) if g.result == st.result and _shares(st, g)]
        match = next((j for j in candidates if j not in reached), candidates[0] if candidates else None)
        if match is not None:
            reached.add(match)
            right_steps.append(k)
        elif gold_steps and first_error is None:
            first_error, reached_before_error = (k, "extra_step" if done else "wrong_quantity"), len(reached)

    if same_number(got, gold, rel_tolerance):
        return _grade_right(text, a, got_s, steps, right_steps, ctx, say)

    # ------------------------------------------------------------------------- a wrong final answer
    weak = [
        say(
            "The final answer {got} is wrong",
            "The answer {got} is wrong",
            "The response's final answer {got} is wrong",
            got=got_s,
        )
        + (f": the correct answer is {gold_s}." if reveal_answer else ".")
    ]
    if not a.shows_work:
        weak.append(
            say(
                "No reasoning is shown, so the error cannot be located.",
                "Only a number is given, with no reasoning, so there is nothing to check.",
            )
        )
        check = f"Check the result (it should be {gold_s})" if reveal_answer else "Check the result"
        sugg = [
            say(
                "Solve the problem step by step, showing each intermediate calculation.",
                "Write out each calculation ('a op b = c') so every step can be checked.",
            ),
        ]
        if gold_steps:
            sugg.append(say("Start by working out how to {plan}.", "First {plan}.", plan=ctx.step_plan(gold_steps[0])))
        sugg.append(f"{check} and state it as 'The answer is {stated}.'.")
        return RubricResult(3, weak, sugg, "bare_wrong")

    praise = _praise_steps(steps, right_steps, first_error[0] if first_error else len(steps), say)
    sugg: list[str] = []
    if first_error is not None:
        k, kind = first_error
        st = steps[k]
        later = len(steps) - k - 1
        if kind == "extra_step":
            j = next(i for i in reversed(right_steps) if i < k)
            weak.append(
                say(
                    "Step {j} ({done}) already answers the question; step {n} ({step}) goes one calculation too "
                    "far{slip}.",
                    "The work is right up to step {j} ({done}), which is where it should stop: step {n} ({step}) "
                    "computes something the question does not ask for{slip}.",
                    j=j + 1,
                    done=steps[j].text,
                    n=k + 1,
                    step=st.text,
                    slip="" if st.correct else ", and its arithmetic is wrong as well",
                )
            )
            sugg.append(
                say(
                    "Stop after step {j} and give its result as the final answer.",
                    "Drop step {n}: the result of step {j} is the answer.",
                    j=j + 1,
                    n=k + 1,
                )
            )
            score, diagnosis = 6, "extra_step"
        elif kind == "arithmetic_slip":
            true = st.value
            if true is None:
                fix = "divides by zero"
                weak.append(f"Step {k + 1} ({st.text}) {fix}, so its result is meaningless.")
            else:
                fields = {"n": k + 1, "step": st.text, "lhs": st.text.split("=")[0].strip()}
                fields["r"] = format_number(st.result)
                if true != gold or reveal_answer:
                    weak.append(
                        say(
                            "Step {n} has an arithmetic slip: {lhs} is {v}, not {r}.",
                            "The first mistake is arithmetic, in step {n} ({step}): {lhs} does not equal {r} (it is {v}).",
                            "Step {n} ({step}) miscalculates: {lhs} comes to {v}, not {r}.",
                            v=format_number(true),
                            **fields,
                        )
                    )
                else:  # its true value is the gold answer: name the slip, not the value
                    weak.append(
                        say(
                            "Step {n} has an arithmetic slip: {lhs} does not equal {r}.",
                            "The first mistake is arithmetic, in step {n} ({step}): {lhs} is not {r}.",
                            **fields,
                        )
                    )
            if later:
                weak.append(
                    say(
                        "Every later step builds on that wrong value, so the final answer is off too.",
                        "The {m} after it carr{y} the error forward to the final answer.",
                        m="step" if later == 1 else f"{later} steps",
                        y="ies" if later == 1 else "y",
                    )
                )
            sugg.append(
                say(
                    "Redo the calculation in step {n} carefully, then carry the corrected value through the rest.",
                    "Recompute step {n} ({lhs}) and update every step that uses its result.",
                    n=k + 1,
                    lhs=st.text.split("=")[0].strip(),
                )
            )
            score = 6 if reached_before_error else 5
            diagnosis = "arithmetic_slip"
        else:
            j = _best_gold_match(st, gold_steps, reached)
            g = gold_steps[j] if j is not None else None
            diagnosis, score = "wrong_quantity", 5 if reached_before_error else 4
            if g is not None and sorted(g.operands) == sorted(st.operands) and g.ops != st.ops:
                diagnosis = "wrong_operation"
                weak.append(
                    say(
                        "Step {n} ({step}) uses the right quantities but the wrong operation: the problem calls "
                        "for {need}, not {used}.",
                        "In step {n} ({step}) the operation is wrong: these quantities should be combined by "
                        "{need} rather than {used}.",
                        n=k + 1,
                        step=st.text,
                        need=" and ".join(_OP_NOUN[o] for o in g.ops),
                        used=" and ".join(_OP_NOUN[o] for o in st.ops),
                    )
                )
                sugg.append(
                    say("In step {n}, {plan} instead.", "Change step {n} to {plan}.", n=k + 1, plan=ctx.step_plan(g, k))
                )
            elif g is not None and len(_diff(g.operands, st.operands)) < len(g.operands):
                used = _diff(st.operands, g.operands)
                needed = _diff(g.operands, st.operands)
                if used and needed:
                    origin = (
                        " (it is not a quantity from the question or an earlier step)"
                        if used[0] not in ctx.given and not any(s.result == used[0] for s in steps[:k])
                        else ""
                    )
                    weak.append(
                        say(
                            "Step {n} ({step}) uses the wrong quantity: {u}{o} where the problem needs {need}.",
                            "The first wrong step is step {n} ({step}): it takes {u}{o} instead of {need}.",
                            n=k + 1,
                            step=st.text,
                            u=format_number(used[0]),
                            o=origin,
                            need=ctx.describe(needed[0], k),
                        )
                    )
                    sugg.append(
                        say(
                            "Replace {u} with {need} in step {n}.",
                            "Redo step {n} with {need} in place of {u}.",
                            n=k + 1,
                            u=format_number(used[0]),
                            need=ctx.describe(needed[0], k),
                        )
                    )
                else:
                    weak.append(
                        f"Step {k + 1} ({st.text}) combines quantities that do not give anything the problem needs."
                    )
                    sugg.append(
                        say("At step {n}, {plan}.", "Step {n} should {plan}.", n=k + 1, plan=ctx.step_plan(g, k))
                    )
            else:
                weak.append(
                    say(
                        "Step {n} ({step}) computes a quantity the problem does not need.",
                        "From step {n} ({step}) on, the work heads the wrong way: that quantity is not part of the "
                        "solution.",
                        n=k + 1,
                        step=st.text,
                    )
                )
                if g is not None:
                    sugg.append(
                        say("At step {n}, {plan}.", "Step {n} should {plan}.", n=k + 1, plan=ctx.step_plan(g, k))
                    )
    elif steps and gold_steps and len(reached) < len(gold_steps):
        j = min(set(range(len(gold_steps))) - reached)
        g = gold_steps[j]
        diagnosis, score = "missing_step", 6 if reached else 4
        after = f" after step {right_steps[-1] + 1}" if right_steps else ""
        if reached:
            weak.append(
                say(
                    "A step is missing{after}: the work stops before it can {plan}.",
                    "The steps shown are right, but one is missing{after}: you still need to {plan}.",
                    after=after,
                    plan=ctx.step_plan(g),
                )
            )
        else:
            weak.append(
                say(
                    "The steps are correct arithmetic, but none computes a quantity the problem needs; the solution "
                    "has to {plan}.",
                    "None of the calculations works towards the answer: the first step the problem needs is to {plan}.",
                    plan=ctx.step_plan(g),
                )
            )
        sugg.append(
            say(
                "Add that step{after}, then finish the calculation.",
                "Add the missing step and carry its result to the end.",
                after=after,
            )
        )
    elif steps and gold_steps:
        diagnosis, score = "final_mismatch", 6
        weak.append(
            say(
                "Every step is correct, but the final answer {got} is not the result of the last step.",
                "The calculations are all right; the mistake is only in the final statement, which gives {got}.",
                got=got_s,
            )
        )
        sugg.append("State the result of the last step as the final answer.")
    elif steps:
        diagnosis, score = "unlocated", 4
        weak.append(
            say(
                "Each calculation is arithmetically correct, so the error is in the setup: which quantities are combined.",
                "The arithmetic checks out; what goes wrong is the choice of quantities and operations.",
            )
        )
        sugg.append("Re-read the question and check that each step combines the quantities it asks about.")
    else:
        diagnosis = "no_steps"
        mentioned = set(numbers_in(text))
        found = [g for g in gold_steps if g.result in mentioned and g.result != gold and g.result not in ctx.given]
        missed = [v for v in ctx.given if v not in mentioned and any(v in g.operands for g in gold_steps)]
        score = 4 if found else 3
        weak.append(
            say(
                "No calculation is written out, so none of the reasoning can be checked.",
                "The reasoning is only in words; no step is written as a calculation that could be verified.",
            )
        )
        if found:
            weak.append(
                say(
                    "It does reach {q} along the way.",
                    "The intermediate {q} is right.",
                    q=format_number(found[0].result),
                )
            )
        if missed:
            weak.append(say("It never uses {q}.", "It ignores {q}.", q=ctx.describe(missed[0])))
        if gold_steps:
            g = next((s for s in gold_steps if s.result not in mentioned), gold_steps[0])
            sugg.append(
                say(
                    "Write the first missing step as a calculation: {plan}.",
                    "Write out the next step as a calculation: {plan}.",
                    plan=ctx.step_plan(g),
                )
            )
        else:
            sugg.append("Write each step as a calculation ('a op b = c') using the quantities in the question.")
    weak[1:1] = praise
    sugg.append(
        say(
            "Recompute the result step by step and state it as 'The answer is {s}.'.",
            "Then finish with 'The answer is {s}.'.",
            "Finish with the corrected result: 'The answer is {s}.'.",
            s=stated,
        )
        if not reveal_answer
        else f"Recompute the result, which should be {gold_s}, and state it as 'The answer is {gold_s}.'."
    )
    return RubricResult(score, weak, sugg, diagnosis)


def _praise_steps(steps: list[Step], right: list[int], before: int, say: _Wording) -> list[str]:
    """One sentence on the correct steps that come before the first error (empty when none)."""
    good = [k for k in right if k < before]
    if not good:
        return []
    listed = ", ".join(f"step {k + 1} ({steps[k].text})" for k in good[:3])
    if len(good) == 1:
        return [
            say(
                "What is right: {s} is correct.",
                "{S} is correct and on the right track.",
                s=listed,
                S=listed[0].upper() + listed[1:],
            )
        ]
    return [say("What is right: {s} are correct.", "The early work is sound: {s} are correct.", s=listed)]


def _grade_right(text, a, got_s, steps, right_steps, ctx: _Context, say: _Wording) -> RubricResult:
    if not a.shows_work:
        weak = [
            say(
                "The final answer {g} is correct, but no reasoning is shown, so it cannot be checked.",
                "The answer {g} is correct, but it comes with no reasoning, so it cannot be checked.",
                g=got_s,
            )
        ]
        sugg = [
            "Show the intermediate steps: name each quantity, the operation used, and its result.",
            f"Then state the result: 'The answer is {got_s}.'.",
        ]
        if ctx.gold_steps:
            sugg.insert(
                1,
                say(
                    "For example, first {plan}.",
                    "Begin by showing how to {plan}.",
                    plan=ctx.step_plan(ctx.gold_steps[0]),
                ),
            )
        return RubricResult(7, weak, sugg, "right_bare")
    slips = [k for k, st in enumerate(steps) if not st.correct]
    mentioned = set(numbers_in(text))
    unshown = [g for g in ctx.gold_steps if g.result not in mentioned]
    listed = ", ".join(steps[k].text for k in right_steps[:3])
    if slips:
        k = slips[0]
        st = steps[k]
        weak = [
            say(
                "The final answer {g} is correct, but step {n} ({step}) has an arithmetic slip: {lhs} is {v}.",
                "The answer {g} is right despite an arithmetic error in step {n} ({step}): {lhs} is {v}.",
                g=got_s,
                n=k + 1,
                step=st.text,
                lhs=st.text.split("=")[0].strip(),
                v=format_number(st.value) if st.value is not None else "undefined",
            )
        ]
        sugg = [f"Correct step {k + 1} so that every written calculation holds, and keep 'The answer is {got_s}.'."]
        return RubricResult(8, weak, sugg, "right_slip")
    praise = (
        say("every step is correct ({s})", "the calculations ({s}) are all correct", s=listed)
        if right_steps
        else say("the reasoning is shown", "the reasoning leads clearly to it")
    )
    if a.explicit and not unshown:
        weak = [
            say(
                "No significant weaknesses: the final answer {g} is correct and {p}.",
                "No real weaknesses: {p}, and the final answer {g} is correct and clearly stated.",
                "None of note: {p}, and the answer {g} is right.",
                g=got_s,
                p=praise,
            )
        ]
        sugg = [
            say(
                "Keep the worked steps; briefly double-check each calculation before stating the answer.",
                "Keep this layout: one calculation per step, then the answer.",
                "Nothing to fix; keep showing each step as a calculation.",
            )
        ]
        return RubricResult(10, weak, sugg, "right_full")
    if a.explicit:
        g = unshown[0]
        weak = [
            say(
                "The final answer {g} is correct and {p}, but not every step is shown: it skips how to {plan}.",
                "The answer {g} is right and {p}, though one step is left out: {plan}.",
                g=got_s,
                p=praise,
                plan=ctx.step_plan(g),
            )
        ]
        sugg = ["Write every intermediate step as a calculation, so each one can be checked."]
        return RubricResult(9, weak, sugg, "right_partial")
    weak = [
        say(
            "The final answer {g} is correct and {p}, but it is never stated explicitly; the reader must guess which "
            "number is the answer.",
            "The answer {g} is right and {p}, but the response never says which number is the answer.",
            g=got_s,
            p=praise,
        )
    ]
    sugg = [f"Finish with an explicit statement of the result: 'The answer is {got_s}.'."]
    return RubricResult(9 if not unshown else 8, weak, sugg, "right_implicit")


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


class ReferenceCritic:
    name = "reference"
    settings_model = ReferenceCriticSettings
    needs_reference = True  # every instruction needs its gold answer (data.*.fields.reference)

    def __init__(self, settings: ReferenceCriticSettings):
        self.settings = settings

    @classmethod
    def from_config(cls, settings: dict[str, Any], policy: Any | None = None) -> ReferenceCritic:
        try:
            parsed = ReferenceCriticSettings.model_validate(dict(settings or {}))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<settings>'}: {e['msg']}" for e in err.errors()
            )
            raise CriticError(f"critic 'reference': invalid settings: {problems}") from None
        return cls(parsed)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": None,  # rule-based: no model
            "rubric": "reference-v2",
            "rel_tolerance": self.settings.rel_tolerance,
            "reveal_answer": self.settings.reveal_answer,
            "template_version": TEMPLATE_VERSION,
            "template_hash": TEMPLATE_HASH,
        }

    def critique(self, requests: Sequence[CritiqueRequest]) -> list[CritiqueReply]:
        return [self._one(r) for r in requests]

    def _one(self, request: CritiqueRequest) -> CritiqueReply:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}  # no model is called
        if not request.reference or not request.reference.strip():
            return CritiqueReply(text=None, error=NO_REFERENCE_ERROR, usage=usage)
        gold = gold_answer(request.reference)
        if gold is None:
            return CritiqueReply(
                text=None, error=f"reference of {request.id!r} holds no numeric final answer", usage=usage
            )
        result = grade(
            request.response or "",
            gold,
            self.settings.rel_tolerance,
            self.settings.reveal_answer,
            reference=request.reference,
            instruction=request.instruction,
            seed=request.id,
        )
        improved = None if request.mode == "score" else clean_gold_solution(request.reference, gold)
        text = render_critique(_bullets(result.weaknesses), _bullets(result.suggestions), result.score, improved)
        return CritiqueReply(text=text, usage=usage)
