"""The `reference` critic's feedback (rubric reference-v2): it checks each `a op b = c` step against the
gold solution and says what is wrong where it can know it (the first wrong step, its kind, the quantity),
praises what is right, spreads its scores by how far the work got, varies its wording by record id
(deterministically), and never writes the gold final answer when `reveal_answer` is false."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from srt.critic import CritiqueRequest
from srt.critic_template import ParsedCritique, parse_critique
from srt.registry import create_critic
from srt_builtin.answers import NUMBER_RE, calculation_steps, evaluate, format_number, gold_answer, numbers_in
from srt_builtin.critics.reference_critic import grade

DATA = Path(__file__).resolve().parents[1] / "configs" / "data"
QUESTION = "Rosa has 26 cards. Rosa buys 17 more and then gives 5 to a friend. How many cards does Rosa have now?"
GOLD = (
    "Rosa starts with 26 cards. After buying 17 more, Rosa has 26 + 17 = 43. "
    "After giving away 5, Rosa has 43 - 5 = 38.\n#### 38"
)

RESPONSES = {
    "right_full": "26 + 17 = 43, then 43 - 5 = 38. The answer is 38.",
    "right_implicit": "26 + 17 = 43, then 43 - 5 = 38 cards.",
    "right_slip": "26 + 17 = 44, but really 43 - 5 = 38. The answer is 38.",
    "right_bare": "38",
    "slip_late": "26 + 17 = 43, then 43 - 5 = 37. The answer is 37.",
    "missing_step": "26 + 17 = 43. The answer is 43.",
    "extra_step": "26 + 17 = 43, then 43 - 5 = 38, and 38 + 5 = 43. The answer is 43.",
    "slip_first": "26 + 17 = 42, then 42 - 5 = 37. The answer is 37.",
    "wrong_quantity_late": "26 + 17 = 43, then 43 - 6 = 37. The answer is 37.",
    "wrong_operation_first": "26 - 17 = 9, then 9 - 5 = 4. The answer is 4.",
    "irrelevant": "2 + 2 = 4. The answer is 4.",
    "words": "Rosa has a lot of cards now, maybe 12 of them. The answer is 12.",
    "bare_wrong": "12",
    "no_answer": "I do not know how to do this one.",
    "empty": "",
}


def critique(response, rid="r1", reveal=False, reference=GOLD, question=QUESTION, mode="critique"):
    critic = create_critic("reference", {"reveal_answer": reveal})
    reply = critic.critique([CritiqueRequest(rid, question, response, reference=reference, mode=mode)])[0]
    assert reply.error is None
    parsed = parse_critique(reply.text) if mode == "critique" else None
    assert mode == "score" or isinstance(parsed, ParsedCritique), parsed
    return parsed, reply.text


def diagnose(response, **kw):
    return grade(response, gold_answer(kw.pop("reference", GOLD)), reference=GOLD, instruction=QUESTION, **kw)


@pytest.mark.parametrize("kind", list(RESPONSES))
def test_each_kind_of_answer_gets_its_diagnosis(kind):
    expected = {
        "slip_late": "arithmetic_slip",
        "slip_first": "arithmetic_slip",
        "wrong_quantity_late": "wrong_quantity",
        "wrong_operation_first": "wrong_operation",
        "irrelevant": "wrong_quantity",
        "words": "no_steps",
        "empty": "no_answer",
    }.get(kind, kind)
    assert diagnose(RESPONSES[kind], reveal_answer=False).kind == expected


def test_feedback_names_the_first_wrong_step_and_the_quantity():
    fb = {k: critique(r)[0] for k, r in RESPONSES.items()}
    # Arithmetic slip: the step, its expression, the true value (an intermediate, not the answer).
    w = fb["slip_first"].weaknesses
    assert "step 1" in w.lower() and "26 + 17" in w and "43" in w and "42" in w
    assert "arithmetic" in w or "miscalculates" in w
    assert "later step" in w or "the error forward" in w
    assert "step 1" in fb["slip_first"].suggestions.lower()
    # A slip in the last step: the first step is praised, the second named; its true value is the
    # gold answer, so it is not written.
    w = fb["slip_late"].weaknesses
    assert "26 + 17 = 43" in w and "correct" in w and "step 2" in w.lower() and "43 - 5" in w
    # Wrong quantity: the operand used and the one needed, quoted from the question.
    w, s = fb["wrong_quantity_late"].weaknesses, fb["wrong_quantity_late"].suggestions
    assert "43 - 6 = 37" in w and "6" in w and "gives 5 to a friend" in w
    assert "not a quantity from the question" in w and "gives 5 to a friend" in s
    # Wrong operation: which operation, and the step to do instead.
    w, s = fb["wrong_operation_first"].weaknesses, fb["wrong_operation_first"].suggestions
    assert "26 - 17 = 9" in w and "addition" in w and "subtraction" in w
    assert s.startswith("- In step 1, add") or "add the 26" in s
    # Missing step: what the missing step does, in words, from the response's own step.
    w = fb["missing_step"].weaknesses
    assert "missing" in w and "subtract the 5 in 'and then gives 5 to a friend' from the 43 from step 1" in w
    # Extra step: where the work should have stopped.
    w = fb["extra_step"].weaknesses
    assert "step 2 (43 - 5 = 38)" in w.lower() and "step 3" in w.lower()
    # Right answers: the correct steps are praised; what is missing is named.
    w = fb["right_full"].weaknesses
    assert "No" in w and "26 + 17 = 43" in w and "43 - 5 = 38" in w and "correct" in w
    assert "never" in fb["right_implicit"].weaknesses or "never says" in fb["right_implicit"].weaknesses
    assert "26 + 17" in fb["right_slip"].weaknesses and "43" in fb["right_slip"].weaknesses
    assert "no reasoning" in fb["right_bare"].weaknesses
    # Words only: says no calculation is written, names a given quantity never used.
    w = fb["words"].weaknesses
    assert "calculation" in w and "26 in 'Rosa has 26 cards'" in w


def test_scores_spread_by_how_far_the_work_got():
    score = {k: critique(r)[0].score for k, r in RESPONSES.items()}
    assert score["right_full"] == 10 and score["right_implicit"] == 9 and score["right_slip"] == 8
    assert score["right_bare"] == 7
    # Wrong with correct early steps > a first step already wrong > nonsense > nothing.
    for late in ("slip_late", "missing_step", "extra_step"):
        assert score[late] == 6, late
    assert score["slip_first"] == score["wrong_quantity_late"] == 5
    assert score["wrong_operation_first"] == score["irrelevant"] == 4
    assert score["words"] == score["bare_wrong"] == 3
    assert score["no_answer"] == 2 and score["empty"] == 1
    # The verdict threshold stays 7: every right answer >= 7 > every wrong one.
    right = [v for k, v in score.items() if k.startswith("right")]
    wrong = [v for k, v in score.items() if not k.startswith("right")]
    assert min(right) >= 7 > max(wrong)


def test_wording_is_deterministic_per_record_id_and_varies_between_ids():
    for response in (RESPONSES["slip_first"], RESPONSES["right_full"], RESPONSES["missing_step"]):
        first = [critique(response, rid=f"stage1-{i:04d}")[1] for i in range(24)]
        again = [critique(response, rid=f"stage1-{i:04d}")[1] for i in range(24)]
        assert first == again
        assert len(set(first)) >= 3, response  # several wordings of the same diagnosis
        # The diagnosis (and so the score) does not depend on the wording.
        assert len({parse_critique(t).score for t in first}) == 1
    # A score-mode call of the same record is seeded the same way.
    _, scored = critique(RESPONSES["slip_first"], rid="x", mode="score")
    assert scored == critique(RESPONSES["slip_first"], rid="x")[1].split("\n\n### Improved Response")[0]


def _rows(split):
    return [json.loads(line) for line in (DATA / f"word_problems_{split}.jsonl").read_text().splitlines()]


def _synthetic(problem):
    """Wrong responses of known kinds built from a shipped gold solution."""
    steps = calculation_steps(problem["answer"])
    out = {}
    last = steps[-1]
    slipped = last.text.rsplit("=", 1)[0] + f"= {format_number(last.result + 1)}"
    out["arithmetic_slip" if len(steps) > 1 else "slip_first"] = (
        " ".join(s.text + "." for s in steps[:-1]) + f" {slipped}. The answer is {format_number(last.result + 1)}."
    )
    a, b = last.operands[0], last.operands[1]
    wrong_b = b + 1 if last.ops[0] != "/" else b * 2
    value = evaluate([a, wrong_b], last.ops[:1])
    if value is not None and value != last.result and len(last.operands) == 2:
        sym = {"+": "+", "-": "-", "*": "x", "/": "/"}[last.ops[0]]
        out["wrong_quantity"] = (
            " ".join(s.text + "." for s in steps[:-1])
            + f" {format_number(a)} {sym} {format_number(wrong_b)} = {format_number(value)}."
            + f" The answer is {format_number(value)}."
        )
    if len(steps) > 1:
        out["missing_step"] = (
            " ".join(s.text + "." for s in steps[:-1]) + f" The answer is {format_number(steps[-2].result)}."
        )
    out["bare_wrong"] = str(problem["final"] + 7)
    out["words"] = (
        f"I think there are {problem['final'] + 11} in all, more or less. The answer is {problem['final'] + 11}."
    )
    # Drop a constructed "wrong" answer that happens to be right (an intermediate equal to the answer).
    return {k: v for k, v in out.items() if gold_answer(v) != problem["final"]}


@pytest.mark.parametrize("split", ["stage1", "heldout"])
def test_no_gold_answer_in_the_feedback_when_it_may_not_be_revealed(split):
    """Over every shipped problem and wrong responses of each kind: with reveal_answer false the feedback
    (weaknesses + suggestions) holds no number equal to the gold answer that the response or the question
    does not hold itself; with reveal_answer true it names it."""
    critic = create_critic("reference", {"reveal_answer": False})
    revealing = create_critic("reference", {"reveal_answer": True})
    kinds = set()
    for p in _rows(split):
        gold = Fraction(p["final"])
        for kind, response in _synthetic(p).items():
            req = CritiqueRequest(p["id"], p["instruction"], response, reference=p["answer"])
            parsed = parse_critique(critic.critique([req])[0].text)
            assert parsed.score <= 6, (kind, response)
            own = set(numbers_in(response)) | set(numbers_in(p["instruction"]))
            said = {
                Fraction(m.group(0).replace(",", ""))
                for m in NUMBER_RE.finditer(re.sub(r"(?i)steps? \d+", "", parsed.weaknesses + parsed.suggestions))
            }
            assert gold in own or gold not in said, (p["id"], kind, parsed.weaknesses, parsed.suggestions)
            told = parse_critique(revealing.critique([req])[0].text)
            assert f"correct answer is {format_number(gold)}" in told.weaknesses
            kinds.add(
                grade(response, gold, reveal_answer=False, reference=p["answer"], instruction=p["instruction"]).kind
            )
    assert {"arithmetic_slip", "wrong_quantity", "missing_step", "bare_wrong", "no_steps"} <= kinds


def test_on_shipped_problems_the_diagnosis_matches_the_constructed_error():
    for p in _rows("stage2")[:40]:
        for kind, response in _synthetic(p).items():
            got = grade(
                response, Fraction(p["final"]), reveal_answer=False, reference=p["answer"], instruction=p["instruction"]
            )
            want = {"slip_first": "arithmetic_slip", "words": "no_steps"}.get(kind, kind)
            assert got.kind == want, (p["id"], kind, response, got)


def test_feedback_is_specific_not_a_template():
    """Different wrong answers to different problems get different feedback, even with numbers masked."""
    critic = create_critic("reference", {"reveal_answer": False})
    texts = []
    for p in _rows("stage1")[:30]:
        for response in _synthetic(p).values():
            reply = critic.critique([CritiqueRequest(p["id"], p["instruction"], response, reference=p["answer"])])[0]
            parsed = parse_critique(reply.text)
            texts.append(re.sub(r"\d+", "#", parsed.weaknesses + parsed.suggestions))
    assert len(set(texts)) > len(texts) // 2


def test_gold_solution_as_refinement_still_scores_ten_and_beats_every_wrong_answer():
    critic = create_critic("reference", {"reveal_answer": False})
    for p in _rows("stage1"):
        parsed = parse_critique(
            critic.critique([CritiqueRequest(p["id"], p["instruction"], "12", reference=p["answer"])])[0].text
        )
        rescore = critic.critique(
            [CritiqueRequest(p["id"], p["instruction"], parsed.improved_response, reference=p["answer"], mode="score")]
        )[0].text
        assert "Overall Score: [[10]]" in rescore, (p["id"], rescore)
