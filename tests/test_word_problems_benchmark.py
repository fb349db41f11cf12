"""The `word_problems` benchmark and the one final-answer extractor it shares with the `reference` critic
(plugins/srt_builtin/answers.py): the critic's verdict and the benchmark's exact match agree on every
shipped problem; settings and data mistakes are one line before any model loads; a run on the tiny model
writes per-sample results, accuracy ± s.e. and paired comparisons, and resumes."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from srt.errors import PluginError, SrtError
from srt.registry import BENCHMARKS, check_plugin_settings, create_critic
from srt_builtin.answers import final_answer, gold_answer
from srt_builtin.benchmarks.word_problems import WordProblemsBenchmark, score

DATA = Path(__file__).resolve().parents[1] / "configs" / "data"
HELDOUT = DATA / "word_problems_heldout.jsonl"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"word_problems_{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "text, number",
    [
        ("3 x 10 = 30 pencils.\n#### 3\nThe answer is: 3", 3),  # the last answer marker wins over the work
        ("So 4 x 3 = 12. The answer is 12. Check: 12 / 3 = 4.", 12),  # a check after the statement
        ("He pays $1,250.50 in total.", Fraction("1250.5")),
        ("So the change is 60 - 54 = 6.", 6),  # binary minus: 54, not -54
        ("The answer is -4.", -4),
        ("\\boxed{7/2}", Fraction(7, 2)),
        ("#### 42", 42),
        ("The answer is unclear, maybe 9", 9),  # a marker without a number: the last number
        ("I am not sure.", None),
        ("", None),
        (None, None),
    ],
)
def test_final_answer(text, number):
    assert final_answer(text) == number


def test_gold_answer_reads_the_hash_line_first():
    assert gold_answer("4 + 5 = 9 apples, 10 in the box.\n#### 9") == 9
    assert gold_answer("The answer is 9.") == 9 and gold_answer("42") == 42 and gold_answer("no number") is None


def _critic_verdicts(problems: list[dict], responses: list[str]) -> list[bool]:
    """The reference critic's verdict: its rubric scores a correct final answer 7, 9 or 10, a wrong one 1-4."""
    from srt.critic import CritiqueRequest
    from srt.critic_template import parse_score

    critic = create_critic("reference", {})
    requests = [
        CritiqueRequest(id=p["id"], instruction=p["instruction"], response=r, reference=p["answer"], mode="score")
        for p, r in zip(problems, responses)
    ]
    scores = [parse_score(reply.text) for reply in critic.critique(requests)]
    assert all(isinstance(s, int) for s in scores)
    return [s >= 7 for s in scores]


@pytest.mark.parametrize("split", ["stage1", "stage2", "heldout"])
def test_critic_verdict_and_benchmark_exact_match_agree_on_every_shipped_problem(split):
    problems = rows(split)
    answers = {
        "gold solution": ([p["answer"] for p in problems], True),
        "gold as a sentence": ([f"So the result is {p['final']}. The answer is {p['final']}." for p in problems], True),
        "bare gold number": ([str(p["final"]) for p in problems], True),
        "wrong by one": ([p["answer"].rsplit("####", 1)[0] + f"#### {p['final'] + 1}" for p in problems], False),
        "wrong, stated": ([f"The answer is {p['final'] * 2 + 3}." for p in problems], False),
    }
    for kind, (responses, expected) in answers.items():
        critic = _critic_verdicts(problems, responses)
        benchmark = [score(r, gold_answer(p["answer"]))["correct"] for p, r in zip(problems, responses)]
        assert critic == benchmark == [expected] * len(problems), kind


# ------------------------------------------------------------------------------------- settings


def _check(settings):
    check_plugin_settings(BENCHMARKS, "word_problems", settings, "benchmarks.word_problems")


def test_settings_model_describes_every_field():
    model = WordProblemsBenchmark.settings_model
    assert model.model_config["extra"] == "forbid"
    for m in (model, model.model_fields["fields"].annotation):
        assert all(f.description for f in m.model_fields.values()), m
    # The constructor parses the same model: every setting, defaults filled in.
    assert set(WordProblemsBenchmark.from_config({"data": str(HELDOUT)}).settings) == set(model.model_fields)
    assert [f for f, info in model.model_fields.items() if info.is_required()] == ["data"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({}, r"benchmarks.word_problems: .*(missing field 'data'|data: Field required)"),
        ({"data": str(HELDOUT), "limt": 3}, r"limt: unknown key"),
        ({"data": str(HELDOUT), "limit": "3"}, r"limit"),
        ({"data": str(HELDOUT), "fields": {"question": "q"}}, r"fields.question: unknown key"),
        ({"data": "nowhere.jsonl"}, r"nowhere.jsonl: word_problems data file not found"),
        (
            {"data": str(HELDOUT), "fields": {"reference": "final"}},
            r"heldout.jsonl:1: needs a non-empty string 'final'",
        ),
    ],
)
def test_settings_mistakes_are_one_line(settings, message):
    with pytest.raises(PluginError, match=message) as err:
        _check(settings)
    assert "\n" not in str(err.value)


def test_data_rows_are_checked_with_file_and_line(tmp_path):
    data = tmp_path / "p.jsonl"
    good = {"id": "a", "instruction": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}
    cases = [
        ([good, {**good, "id": "b", "answer": "I do not know"}], r"p.jsonl:2: 'answer' holds no numeric final answer"),
        ([good, {**good, "instruction": ""}], r"p.jsonl:2: needs a non-empty string 'instruction'"),
        ([good, good], r"p.jsonl:2: duplicate id 'a'"),
    ]
    for lines, message in cases:
        data.write_text("".join(json.dumps(r) + "\n" for r in lines))
        with pytest.raises(PluginError, match=message):
            _check({"data": str(data)})
    # Other column names through `fields`, ids made up where a row has none, `limit` stops reading.
    data.write_text(json.dumps({"q": "What is 2 + 2?", "sol": "#### 4"}) + "\n" + "not json\n")
    bench = WordProblemsBenchmark.from_config(
        {"data": str(data), "fields": {"instruction": "q", "reference": "sol"}, "limit": 1}
    )
    assert [(p["id"], p["gold"]) for p in bench.problems] == [("row-1", 4)]
    with pytest.raises(SrtError, match=r"p.jsonl:2: invalid JSON"):
        WordProblemsBenchmark.from_config({"data": str(data), "fields": {"instruction": "q", "reference": "sol"}})


# ------------------------------------------------------------------------------ a run (tiny model)


def test_run_on_the_tiny_model_plain_and_srt_with_comparisons_and_resume(tmp_path):
    from srt.eval.model import EvalModel
    from srt.eval.runner import run_eval

    def models():
        return [
            EvalModel("base", "tiny", batch_size=2, sampling={"max_new_tokens": 8}),
            EvalModel("srt", "tiny", answer_mode="srt", batch_size=2, sampling={"max_new_tokens": 16}),
        ]

    benchmarks = {"word_problems": {"data": str(HELDOUT), "limit": 3}}
    out = tmp_path / "eval"
    first = run_eval(models(), benchmarks, out, compare=[["srt", "base"]])

    base = [json.loads(line) for line in (out / "base" / "word_problems" / "samples.jsonl").read_text().splitlines()]
    srt = [json.loads(line) for line in (out / "srt" / "word_problems" / "samples.jsonl").read_text().splitlines()]
    heldout = rows("heldout")[:3]
    assert [s["id"] for s in base] == [s["id"] for s in srt] == [r["id"] for r in heldout]
    assert [s["gold"] for s in base] == [str(r["final"]) for r in heldout]
    for s in base + srt:  # each verdict is the extractor's on the recorded answer
        assert s["correct"] == (final_answer(s["answer"]) == int(s["gold"]))
        assert s["extracted"] == (None if final_answer(s["answer"]) is None else str(final_answer(s["answer"])))
    assert "response_correct" not in base[0] and "self_score" not in base[0]
    for s in srt:
        assert s["mode"] == "srt" and s["response_correct"] == (final_answer(s["response"]) == int(s["gold"]))
        assert {"self_score", "parsed", "fallback", "feedback", "rubric_response"} <= set(s)
        # The random tiny model never writes the SRT format: every answer falls back to the response.
        assert s["parsed"] is False and s["fallback"] is True and s["answer"] == s["response"]

    m = first["results"]["srt"]["word_problems"]["metrics"]
    k = sum(s["correct"] for s in srt)
    assert m["n_samples"] == 3 and m["n_correct"] == k and m["accuracy"] == pytest.approx(100 * k / 3)
    assert m["srt_parse_rate"] == 0.0 and m["srt_fallbacks"] == 3 and "fixed_by_refinement" in m
    assert "response_accuracy" not in first["results"]["base"]["word_problems"]["metrics"]
    assert [(c["model"], c["answer"], c["baseline"]) for c in first["comparisons"]] == [
        ("srt", "answer", "base"),
        ("srt", "response", "base"),
    ]
    assert "## Paired comparisons" in (out / "report.md").read_text()
    assert (out / "plots" / "word_problems__accuracy.png").stat().st_size > 0

    second = run_eval(models(), benchmarks, out, compare=[["srt", "base"]])
    assert all(e["resumed"] for per in second["results"].values() for e in per.values())
    assert second["comparisons"] == first["comparisons"]
    assert {m: {b: e["metrics"] for b, e in per.items()} for m, per in second["results"].items()} == {
        m: {b: e["metrics"] for b, e in per.items()} for m, per in first["results"].items()
    }
