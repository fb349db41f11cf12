import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srt.critic_template import (
    CRITIC_TEMPLATE,
    FEEDBACK_HEADER,
    FEEDBACK_SEPARATOR,
    REFINEMENT_HEADER,
    REFINEMENT_SEPARATOR,
    TEMPLATE_HASH,
    TEMPLATE_VERSION,
    ParsedCritique,
    ParseFailure,
    SrtOutput,
    parse_critique,
    parse_score,
    parse_srt_output,
    render_critic_prompt,
    render_critique,
    render_feedback,
    render_srt_segments,
    render_srt_turn,
    self_critique_prefix,
    srt_segments,
)

GOOD = """Weaknesses:
The answer skips the second step.

Suggestions:
Explain the second step with an example.

Overall Score: [[6]]

### Improved Response
Step 1 ... Step 2 ..."""


def critique(
    weak_header="Weaknesses:",
    sugg_header="Suggestions:",
    score_line="Overall Score: [[6]]",
    improved_header="### Improved Response",
    improved="Better answer.",
):
    parts = [f"{weak_header}\nToo short.", f"{sugg_header}\nAdd detail.", score_line]
    text = "\n\n".join(p for p in parts if p is not None)
    if improved_header is not None:
        text += f"\n\n{improved_header}\n{improved}"
    return text


# ---------------------------------------------------------------- template


def test_template_sections_in_order_and_prompt_ends_at_feedback_header():
    headers = [line for line in CRITIC_TEMPLATE.splitlines() if line.startswith("### ")]
    assert headers == ["### Instruction", "### Response", "### Requirements", "### Feedback"]
    prompt = render_critic_prompt("Add {x} and 2.", "It is 4. {y}")
    assert "### Response\nIt is 4. {y}\n\n### Requirements\n" in prompt
    assert prompt.endswith("\n### Feedback\n")
    assert "### Instruction\nAdd {x} and 2.\n" in prompt
    for needle in ("Weaknesses:", "Suggestions:", "Overall Score: [[n]]", "### Improved Response"):
        assert needle in prompt.split("### Requirements")[1]


def test_template_hash_is_sha256_of_version_and_text():
    assert TEMPLATE_VERSION == "srt-critic-v1"
    expected = hashlib.sha256(f"{TEMPLATE_VERSION}\n{CRITIC_TEMPLATE}".encode()).hexdigest()[:16]
    assert TEMPLATE_HASH == expected and re.fullmatch(r"[0-9a-f]{16}", TEMPLATE_HASH)


def test_render_critique_canonical_format():
    assert (
        render_critique("w", "s", 7, "r")
        == "Weaknesses:\nw\n\nSuggestions:\ns\n\nOverall Score: [[7]]\n\n### Improved Response\nr"
    )
    assert render_critique("w", "s", 7) == "Weaknesses:\nw\n\nSuggestions:\ns\n\nOverall Score: [[7]]"


def test_render_feedback_ablations():
    assert render_feedback("w", None, None) == "Weaknesses:\nw"
    assert render_feedback(None, "s", 3) == "Suggestions:\ns\n\nOverall Score: [[3]]"
    assert render_feedback(None, None, 10) == "Overall Score: [[10]]"
    assert render_feedback(None, None, None) == ""
    assert render_feedback("w", "s", 2) == render_critique("w", "s", 2)


# ---------------------------------------------------------------- parse_critique


def test_parse_canonical():
    p = parse_critique(GOOD)
    assert isinstance(p, ParsedCritique)
    assert p.weaknesses == "The answer skips the second step."
    assert p.suggestions == "Explain the second step with an example."
    assert p.score == 6
    assert p.improved_response == "Step 1 ... Step 2 ..."
    assert p.raw == GOOD
    assert p.feedback_text() == render_feedback(p.weaknesses, p.suggestions, 6)


@pytest.mark.parametrize(
    "header",
    [
        "### Improved Response",
        "###Improved Response",
        "**Improved Response:**",
        "## improved response",
        "  ###   IMPROVED   RESPONSE  ",
        "Improved Response:",
        "**Improved Response**:",
        "# Improved response",
    ],
)
def test_improved_header_variants(header):
    p = parse_critique(critique(improved_header=header))
    assert isinstance(p, ParsedCritique), (header, p)
    assert p.improved_response == "Better answer." and p.suggestions == "Add detail."


@pytest.mark.parametrize(
    "weak, sugg",
    [
        ("Weaknesses:", "Suggestions:"),
        ("**Weaknesses**:", "**Suggestions**:"),
        ("### Weaknesses", "### Suggestions"),
        ("**Weaknesses:**", "**Suggestions:**"),
        ("weaknesses :", "SUGGESTIONS"),
        ("## Weakness", "## Actionable Suggestions:"),
        ("1. Weaknesses:", "2. Suggestions:"),
        ("__Weaknesses__", "__Suggestions:__"),
    ],
)
def test_section_header_variants(weak, sugg):
    p = parse_critique(critique(weak_header=weak, sugg_header=sugg))
    assert isinstance(p, ParsedCritique), (weak, sugg, p)
    assert (p.weaknesses, p.suggestions, p.score) == ("Too short.", "Add detail.", 6)


def test_text_on_header_line_belongs_to_section():
    text = "Weaknesses: too short\nand vague.\nSuggestions: add an example.\nOverall Score: [[4]]\n### Improved Response\nfixed"
    p = parse_critique(text)
    assert (p.weaknesses, p.suggestions, p.score) == ("too short\nand vague.", "add an example.", 4)


def test_sentence_starting_with_keyword_is_not_a_header():
    text = "Weaknesses:\nSuggestions are missing here and the tone is off.\n\nSuggestions:\nfix it\n\nOverall Score: [[3]]\n\n### Improved Response\nx"
    p = parse_critique(text)
    assert p.weaknesses == "Suggestions are missing here and the tone is off." and p.suggestions == "fix it"


def test_echoed_feedback_header_is_dropped():
    for echo in ("### Feedback\n", "\n### Feedback\n### Feedback\n", "**Feedback:**\n", "## feedback\n\n"):
        p = parse_critique(echo + GOOD)
        assert isinstance(p, ParsedCritique), echo
        assert p.weaknesses == "The answer skips the second step."


@pytest.mark.parametrize(
    "line, score",
    [
        ("Overall Score: [[10]]", 10),
        ("Overall Score: [[1]]", 1),
        ("Overall Score: [[ 7 ]]", 7),
        ("overall score: [[7]]", 7),
        ("OVERALL SCORE:[[8]]", 8),
        ("**Overall Score:** [[9]]", 9),
        ("Overall Score: [[5/10]]", 5),
        ("Overall Score: [[+3]]", 3),
        ("- Overall Score: **[[2]]**", 2),
    ],
)
def test_score_variants(line, score):
    p = parse_critique(critique(score_line=line))
    assert isinstance(p, ParsedCritique), (line, p)
    assert p.score == score
    assert p.suggestions == "Add detail."  # the score line (with decoration) is not part of the section
    assert parse_score(critique(score_line=line)) == score


def test_ten_and_one_are_never_confused():
    assert parse_score("Overall Score: [[10]]") == 10
    assert parse_score("Overall Score: [[1]]") == 1
    assert parse_score("Overall Score: [[1]]0") == 1
    assert isinstance(parse_score("Overall Score: [[1 0]]"), ParseFailure)
    assert isinstance(parse_score("Overall Score: [[100]]"), ParseFailure)
    # A "1" next to "10" elsewhere in the text does not leak in.
    assert parse_score("Rated 1 of 10 earlier.\nOverall Score: [[10]]") == 10


@pytest.mark.parametrize(
    "value, reason",
    [
        ("0", "score_out_of_range"),
        ("11", "score_out_of_range"),
        ("-1", "score_out_of_range"),
        ("7.5", "invalid_score"),
        ("seven", "invalid_score"),
        ("", "invalid_score"),
        ("7/5", "invalid_score"),
    ],
)
def test_bad_scores(value, reason):
    text = critique(score_line=f"Overall Score: [[{value}]]")
    for result in (parse_critique(text), parse_score(text)):
        assert isinstance(result, ParseFailure)
        assert result.reason == reason and result.raw == text and result.message


def test_missing_score():
    for line in (None, "Overall Score: 7", "Score: 8/10"):
        f = parse_critique(critique(score_line=line))
        assert isinstance(f, ParseFailure) and f.reason == "missing_score", line


def test_last_score_in_feedback_wins_and_improved_scores_ignored():
    text = critique(
        score_line="Overall Score: [[3]]\nOn reflection:\nOverall Score: [[5]]",
        improved="Answer.\nOverall Score: [[10]]",
    )
    p = parse_critique(text)
    assert p.score == 5 and p.improved_response == "Answer.\nOverall Score: [[10]]"
    assert parse_score(text) == 5
    # The last verdict wins even when it is invalid.
    f = parse_critique(critique(score_line="Overall Score: [[8]]\nOverall Score: [[11]]"))
    assert f.reason == "score_out_of_range"
    # A score only after the improved-response header does not count.
    assert parse_score("Weaknesses:\nx\n### Improved Response\nOverall Score: [[9]]").reason == "missing_score"


def test_missing_sections():
    assert parse_critique("").reason == "empty"
    assert parse_critique("   \n ").reason == "empty"
    assert parse_critique(None).reason == "empty"
    assert parse_score("").reason == "empty"
    assert parse_critique(critique(weak_header="Problems:")).reason == "missing_weaknesses"
    assert (
        parse_critique("Weaknesses:\n\nSuggestions:\nx\nOverall Score: [[3]]\n### Improved Response\ny").reason
        == "missing_weaknesses"
    )
    assert parse_critique(critique(sugg_header="Ideas:")).reason == "missing_suggestions"
    f = parse_critique(critique(improved_header=None))
    assert f.reason == "missing_improved_response"
    assert parse_critique(critique(improved="   ")).reason == "missing_improved_response"


def test_improved_response_optional():
    p = parse_critique(critique(improved_header=None), require_improved_response=False)
    assert isinstance(p, ParsedCritique) and p.improved_response is None and p.score == 6
    p = parse_critique(critique(improved="  "), require_improved_response=False)
    assert p.improved_response is None


def test_non_english_text():
    text = render_critique("回答太短，缺少例子。", "أضف مثالاً واضحاً 🙂", 10, "这是改进后的回答 🎉\nمرحبا")
    p = parse_critique(text)
    assert (p.weaknesses, p.suggestions, p.score, p.improved_response) == (
        "回答太短，缺少例子。",
        "أضف مثالاً واضحاً 🙂",
        10,
        "这是改进后的回答 🎉\nمرحبا",
    )


# ---------------------------------------------------------------- SRT turn


def test_srt_segments_and_turn():
    segs = srt_segments("resp", "FB", "ref")
    assert segs == [
        ("response", "resp"),
        ("feedback", "\n\n### Feedback\nFB"),
        ("refinement", "\n\n### Improved Response\nref"),
    ]
    assert render_srt_turn("resp", "FB", "ref") == "resp\n\n### Feedback\nFB\n\n### Improved Response\nref"
    assert render_srt_segments is srt_segments
    assert FEEDBACK_SEPARATOR == f"\n\n{FEEDBACK_HEADER}\n" and REFINEMENT_SEPARATOR == f"\n\n{REFINEMENT_HEADER}\n"
    assert [name for name, _ in srt_segments("r", None, "x")] == ["response", "refinement"]
    assert srt_segments("r", None, None) == [("response", "r")]


def test_self_critique_prefix_is_prefix_of_turn():
    turn = render_srt_turn("resp", "FB", "ref")
    prefix = self_critique_prefix("resp")
    assert turn.startswith(prefix) and prefix.endswith("### Feedback\n")


def test_parse_srt_output_full():
    out = parse_srt_output(
        render_srt_turn("The answer is 4.", render_feedback("No steps.", "Show steps.", 5), "2 + 2 = 4.")
    )
    assert isinstance(out, SrtOutput) and out.failure is None
    assert out.response == "The answer is 4." and out.feedback.score == 5 and out.refinement == "2 + 2 = 4."
    assert out.answer == "2 + 2 = 4." and not out.used_fallback


def test_parse_srt_output_fallbacks():
    out = parse_srt_output("Just an answer, no feedback. Feedback: none needed.")
    assert (
        out.failure.reason == "missing_feedback" and out.answer == "Just an answer, no feedback. Feedback: none needed."
    )
    assert out.used_fallback
    # Feedback cut off (max tokens): answer falls back to the response.
    out = parse_srt_output("resp\n\n### Feedback\nWeaknesses:\nsomething")
    assert out.failure.reason == "missing_suggestions" and out.answer == "resp" and out.refinement is None
    # Feedback without a score but with a refinement: the refinement is still the answer.
    out = parse_srt_output("resp\n\n### Feedback\nWeaknesses:\nw\nSuggestions:\ns\n### Improved Response\nbetter")
    assert out.failure.reason == "missing_score" and out.answer == "better" and out.feedback is None
    # The model skipped the feedback header but wrote the sections.
    out = parse_srt_output(
        "resp\n\nWeaknesses:\nw\nSuggestions:\ns\nOverall Score: [[4]]\n### Improved Response\nbetter"
    )
    assert out.failure is None and out.response == "resp" and out.feedback.weaknesses == "w" and out.answer == "better"


# ---------------------------------------------------------------- property tests

_KEYWORDS = re.compile(r"weakness|suggestion|improved|score|feedback|\[\[|\]\]", re.IGNORECASE)
# Arbitrary unicode, plus text dense in the markdown/punctuation the parser looks at.
_tricky = st.text(alphabet="ab #*_:-.1)[]\n\t\r\u2028\x1c中🎉", min_size=1, max_size=60)
free_text = st.one_of(st.text(min_size=1, max_size=200), _tricky).filter(
    lambda t: t.strip() and not _KEYWORDS.search(t)
)
scores = st.integers(min_value=1, max_value=10)


@settings(max_examples=300, deadline=None)
@given(free_text, free_text, scores, free_text)
def test_property_critique_roundtrip(weak, sugg, score, improved):
    p = parse_critique(render_critique(weak, sugg, score, improved))
    assert isinstance(p, ParsedCritique), p
    assert (p.weaknesses, p.suggestions, p.score, p.improved_response) == (
        weak.strip(),
        sugg.strip(),
        score,
        improved.strip(),
    )
    assert parse_score(render_critique(weak, sugg, score)) == score


@settings(max_examples=300, deadline=None)
@given(free_text, free_text, free_text, scores, free_text)
def test_property_srt_turn_roundtrip(response, weak, sugg, score, refinement):
    out = parse_srt_output(render_srt_turn(response, render_feedback(weak, sugg, score), refinement))
    assert out.failure is None, out.failure
    assert (
        out.response == response.strip() and out.refinement == refinement.strip() and out.answer == refinement.strip()
    )
    assert (out.feedback.weaknesses, out.feedback.suggestions, out.feedback.score) == (
        weak.strip(),
        sugg.strip(),
        score,
    )


# ---------------------------------------------------------------- which line is the improved-response header

REFINED = "The total is 12 apples: 5 + 7 = 12."


def test_list_item_mentioning_improved_response_in_weaknesses_is_not_the_header():
    text = (
        "Weaknesses:\n- The answer skips the addition.\n- Improved response: it should show 5 + 7.\n\n"
        "Suggestions:\nShow the sum.\n\nOverall Score: [[4]]\n\n### Improved Response\n" + REFINED
    )
    p = parse_critique(text)
    assert isinstance(p, ParsedCritique), p  # was missing_suggestions: the bullet cut the feedback short
    assert p.weaknesses == "- The answer skips the addition.\n- Improved response: it should show 5 + 7."
    assert (p.suggestions, p.score, p.improved_response) == ("Show the sum.", 4, REFINED)
    assert parse_score(text) == 4
    # Bullets with other markers, decoration, or no text never count either.
    for bullet in ("* Improved response: show 5 + 7.", "- **Improved Response:** show it", "- Improved Response"):
        p = parse_critique(text.replace("- Improved response: it should show 5 + 7.", bullet))
        assert isinstance(p, ParsedCritique) and p.improved_response == REFINED, (bullet, p)


def test_inline_commentary_line_is_not_the_header_when_a_real_one_follows():
    text = (
        "Weaknesses:\nNo working shown.\n\nSuggestions:\nShow the sum.\n\nOverall Score: [[5]]\n\n"
        "Improved response: see below.\n\n### Improved Response\n" + REFINED
    )
    p = parse_critique(text)
    assert isinstance(p, ParsedCritique), p
    assert p.improved_response == REFINED  # was "see below.\n\n### Improved Response\n..."
    assert "see below" not in p.improved_response and "Improved Response" not in p.improved_response
    assert (p.weaknesses, p.suggestions, p.score) == ("No working shown.", "Show the sum.", 5)
    # The same inside an SRT model's own turn.
    out = parse_srt_output("It is 12.\n\n### Feedback\n" + text)
    assert out.failure is None and out.refinement == REFINED and out.answer == REFINED


def test_a_list_item_alone_does_not_make_an_improved_response():
    text = "Weaknesses:\n- Improved response: missing\n\nSuggestions:\nAdd one.\n\nOverall Score: [[3]]\n"
    assert parse_critique(text).reason == "missing_improved_response"
    p = parse_critique(text, require_improved_response=False)
    assert p.weaknesses == "- Improved response: missing" and p.improved_response is None


def test_inline_header_after_the_score_is_the_fallback():
    feedback = "Weaknesses:\nw\n\nSuggestions:\ns\n\nOverall Score: [[6]]\n\n"
    text = feedback + "Improved Response: " + REFINED + "\nSecond line."
    p = parse_critique(text)
    assert isinstance(p, ParsedCritique) and p.improved_response == REFINED + "\nSecond line."
    assert p.suggestions == "s"
    # ... but not before the score line (it is feedback there), nor as a numbered item.
    before = "Weaknesses:\nImproved response: too terse.\n\nSuggestions:\ns\n\nOverall Score: [[6]]\n"
    assert parse_critique(before).reason == "missing_improved_response"
    assert parse_critique(before + "\n### Improved Response\n" + REFINED).weaknesses == "Improved response: too terse."
    numbered = feedback + "4. Improved Response: " + REFINED
    assert parse_critique(numbered).reason == "missing_improved_response"
    # A header alone wins over an earlier inline line.
    both = text.replace("\nSecond line.", "\n\n**Improved Response:**\nThe real one.")
    assert parse_critique(both).improved_response == "The real one."


@pytest.mark.parametrize(
    "header",
    [
        "### Improved Response",
        "Improved Response",
        "improved response:",
        "**Improved Response**",
        "__Improved Response__",
        "### **Improved Response:**",
        "## Improved Response :",
        "4. Improved Response",
        "4) **Improved Response:**",
        "\t#   improved\tresponse  ",
    ],
)
def test_header_alone_variants(header):
    p = parse_critique(critique(improved_header=header, improved=REFINED))
    assert isinstance(p, ParsedCritique), (header, p)
    assert p.improved_response == REFINED and p.suggestions == "Add detail."


@pytest.mark.parametrize(
    "line",
    [
        "- Improved response: shorter",
        "* Improved Response",
        "Improved response is what follows.",
        "The improved response:",
        "Improved responses were tried:",
        "Improved response - see below",
    ],
)
def test_lines_that_are_not_the_header(line):
    # Inserted in the weaknesses of a canonical critique: the parse is unchanged apart from the weaknesses.
    text = critique(improved=REFINED).replace("Too short.", f"Too short.\n{line}")
    p = parse_critique(text)
    assert isinstance(p, ParsedCritique), (line, p)
    assert p.weaknesses == f"Too short.\n{line}" and p.improved_response == REFINED


_deco = st.sampled_from(["", "**", "__"])
_hashes = st.sampled_from(["", "#", "## ", "### ", "###### "])
_spaces = st.sampled_from(["", " ", "  ", "\t"])


@settings(max_examples=200, deadline=None)
@given(
    _hashes,
    _deco,
    _spaces,
    st.sampled_from(["Improved Response", "improved response", "IMPROVED  RESPONSE"]),
    st.booleans(),
    _spaces,
    free_text,
    free_text,
)
def test_property_header_alone_splits_and_bullets_never_do(hashes, deco, pad, keyword, colon, trail, note, refinement):
    header = f"{pad}{hashes}{deco}{keyword}{':' if colon else ''}{deco}{trail}"
    bullet = f"- Improved response: {note.splitlines()[0] if note.splitlines() else 'x'}"
    feedback = f"Weaknesses:\nToo short.\n{bullet}\n\nSuggestions:\nAdd detail.\n\nOverall Score: [[6]]\n\n"
    text = f"{feedback}{header}\n{refinement}"
    p = parse_critique(text)
    assert isinstance(p, ParsedCritique), (header, p)
    assert p.improved_response == refinement.strip()
    assert p.weaknesses == f"Too short.\n{bullet}".strip()
