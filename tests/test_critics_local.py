"""The local critics: reference (rule-based), hf (a transformers model) and self (the SRT model)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from srt.critic import CritiqueRequest
from srt.critic_template import ParsedCritique, ParseFailure, parse_critique, parse_score
from srt.registry import CRITICS, load_plugin

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many clips did she sell altogether?"


# ---------------------------------------------------------------------------------------------
# reference critic


@pytest.fixture()
def reference_critic():
    return load_plugin(CRITICS, "reference").from_config({})


def _critique(critic, response, reference=GSM8K_GOLD, mode="critique"):
    reply = critic.critique([CritiqueRequest("r1", QUESTION, response, reference=reference, mode=mode)])[0]
    assert reply.error is None, reply.error
    return reply


@pytest.mark.parametrize(
    "response, score",
    [
        ("In May she sold 48/2 = 24 clips, so 48 + 24 = 72 in total. The answer is 72.", 10),
        ("The answer is 72. Check: 72 - 48 = 24, which is half of 48.", 10),  # work after the statement
        ("She sold 24 clips in May and 48 in April, 72 clips in total", 9),  # correct, answer implicit
        ("72", 7),
        ("The answer is 72.", 7),
        ("She sold 48 + 12 = 60 clips. The answer is 60.", 4),
        ("60", 3),
        ("I am not sure how to solve this problem.", 2),
        ("", 1),
    ],
)
def test_reference_rubric(reference_critic, response, score):
    parsed = parse_critique(_critique(reference_critic, response).text)
    assert isinstance(parsed, ParsedCritique), parsed
    assert parsed.score == score
    assert parsed.weaknesses and parsed.suggestions


def test_reference_feedback_names_the_problem(reference_critic):
    wrong = parse_critique(_critique(reference_critic, "48 + 12 = 60. The answer is 60.").text)
    assert "60 is wrong" in wrong.weaknesses and "72" in wrong.weaknesses
    missing = parse_critique(_critique(reference_critic, "I am not sure how to solve this problem.").text)
    assert "no numeric final answer" in missing.weaknesses
    bare = parse_critique(_critique(reference_critic, "72").text)
    assert "no reasoning" in bare.weaknesses and "step" in bare.suggestions.lower()


def test_reference_refinement_is_the_cleaned_gold_and_scores_top(reference_critic):
    parsed = parse_critique(_critique(reference_critic, "60").text)
    assert parsed.improved_response == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72."
    )
    rescore = _critique(reference_critic, parsed.improved_response, mode="score").text
    assert "### Improved Response" not in rescore  # score mode writes only the feedback
    assert parse_score(rescore) == 10
    # The refinement wins over a wrong response and ties with a correct worked one.
    correct = parse_critique(_critique(reference_critic, "48/2 = 24 and 48 + 24 = 72. The answer is 72.").text)
    assert parsed.score < 10 == correct.score


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("Total: 1,234 + 0 = 1234. The answer is 1,234.", "#### 1,234", True),
        ("The answer is 1234.", "#### 1,234", True),
        ("The answer is $1,234.50", "#### 1234.5", True),
        ("x = 10 - 13 = -3, so the answer is -3.", "#### -3", True),
        ("48-24 = 24 clips", "#### -24", False),  # a binary minus is not a sign
        ("The answer is 2.5", "#### 5/2", True),
        ("The answer is 0.5", "#### 2.5", False),
        ("The answer is 72,000", "#### 72", False),
        ("答案是72", "72", True),  # numbers inside CJK text
        ("The answer is 42.", "42", True),  # a bare-number gold
    ],
)
def test_reference_number_formats(reference_critic, response, gold, correct):
    parsed = parse_critique(_critique(reference_critic, response, reference=gold).text)
    assert isinstance(parsed, ParsedCritique)
    assert (parsed.score >= 7) is correct


def test_reference_gold_formats():
    from srt_builtin.critics.reference_critic import clean_gold_solution, gold_answer

    assert gold_answer("#### 1,234") == 1234
    assert gold_answer("some steps 3 + 4 = 7\n#### -7.5") == Fraction(-15, 2)
    assert gold_answer("42") == 42
    assert gold_answer("So she has 12 apples left. The answer is 12.") == 12
    assert clean_gold_solution("42", Fraction(42)) == "The answer is 42."
    assert clean_gold_solution("#### 1,234", Fraction(1234)) == "The answer is 1234."
    assert clean_gold_solution("So 5 + 7 = 12 apples", Fraction(12)) == "So 5 + 7 = 12 apples\nThe answer is 12."


def test_reference_errors_and_determinism(reference_critic):
    requests = [
        CritiqueRequest("a", QUESTION, "The answer is 72.", reference=None),
        CritiqueRequest("b", QUESTION, "The answer is 72.", reference="no number here"),
        CritiqueRequest("c", QUESTION, "48 + 24 = 72. The answer is 72.", reference=GSM8K_GOLD),
    ]
    first = reference_critic.critique(requests)
    assert first[0].text is None and first[0].error == "reference critic needs a gold answer"
    assert first[1].text is None and "no numeric final answer" in first[1].error
    assert first[2].error is None
    second = reference_critic.critique(requests)
    assert [r.text for r in first] == [r.text for r in second]
    desc = reference_critic.describe()
    assert desc["name"] == "reference" and desc["template_hash"]


def test_reference_rejects_unknown_settings():
    from srt.errors import CriticError

    with pytest.raises(CriticError, match="reference"):
        load_plugin(CRITICS, "reference").from_config({"tolerance": 1})
