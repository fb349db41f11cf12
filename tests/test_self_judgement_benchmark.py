"""The `self_judgement` benchmark (the paper's Table 5 analogue): AUROC of the model's own score of its
response for right vs. wrong responses, the paper's pairwise agreement with its counts, and the parse
rate; the computation on constructed inputs, the benchmark on a stand-in model, and srt-eval end to end
on the tiny model (untrained: nothing parses; trained to write the SRT format: real self-scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import single_thread, train_srt_model

from srt.critic_template import render_feedback
from srt.errors import ConfigError, SrtError
from srt.eval.benchmark import EvalContext
from srt.registry import BENCHMARKS, check_plugin_settings, create_benchmark
from srt_builtin.benchmarks.self_judgement import auroc, pair_agreement, self_judgement_metrics

REPO = Path(__file__).resolve().parents[1]
_threads = pytest.fixture(autouse=True, scope="module")(single_thread)


# --------------------------------------------------------------------------- the computation


def test_auroc_perfect_inverted_ties_and_undefined():
    assert auroc([8, 9, 10], [2, 3, 4]) == 100.0
    assert auroc([2, 3], [8, 9]) == 0.0
    assert auroc([5, 5], [5, 5, 5]) == 50.0  # every pair tied: chance
    assert auroc([7, 4], [4]) == 75.0  # one win, one tie over two pairs
    assert auroc([], [3]) is None and auroc([3], []) is None


def test_pair_agreement_counts_like_the_paper():
    c = pair_agreement([9, 5, None], [5, 3])
    # (9,5) agree, (9,3) agree, (5,5) tie, (5,3) agree, (None,5) and (None,3) unscored.
    assert c == {
        "pairs": 6,
        "pairs_agree": 3,
        "pairs_tie": 1,
        "pairs_disagree": 0,
        "pairs_unscored": 2,
        "agreement": 50.0,
    }
    assert pair_agreement([2], [8])["pairs_disagree"] == 1 and pair_agreement([2], [8])["agreement"] == 0.0
    assert pair_agreement([], [1])["agreement"] is None


def test_metrics_over_samples_with_unparsed_scores():
    samples = [
        {"response_correct": True, "self_score": 9},
        {"response_correct": True, "self_score": None},
        {"response_correct": False, "self_score": 4},
        {"response_correct": False, "self_score": 9},
    ]
    m = self_judgement_metrics(samples)
    assert m["n_responses"] == 4 and m["n_right"] == 2 and m["n_wrong"] == 2
    assert m["score_parse_rate"] == 75.0
    assert m["auroc"] == 75.0  # 9 vs 4 win, 9 vs 9 tie; the unparsed right response is left out
    assert (m["pairs"], m["pairs_agree"], m["pairs_tie"], m["pairs_unscored"]) == (4, 1, 1, 2)
    assert m["agreement"] == 25.0  # unparsed pairs count as no agreement
    assert m["mean_score_right"] == 9 and m["mean_score_wrong"] == 6.5


# ------------------------------------------------------------------------- settings and data


def test_defaults_to_the_heldout_word_problems_and_checks_its_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    bench = create_benchmark("self_judgement", {})
    assert len(bench.problems) == 64 and bench.describe()["data_identity"].startswith("word_problems_heldout.jsonl")
    assert create_benchmark("self_judgement", {"limit": 5}).describe()["num_problems"] == 5
    with pytest.raises(ConfigError, match="scoring"):
        create_benchmark("self_judgement", {"scoring": "vibes"})
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"q": "What is 2 + 2?", "sol": "#### 4"}) + "\n" + json.dumps({"q": "x", "sol": "?"}))
    with pytest.raises(SrtError, match=r"p.jsonl:2: 'sol' holds no numeric final answer"):
        check_plugin_settings(
            BENCHMARKS,
            "self_judgement",
            {"data": str(data), "fields": {"instruction": "q", "reference": "sol"}},
            "benchmarks.self_judgement",
        )


# -------------------------------------------------------------------- run, with a stand-in model


class StandIn:
    """Answers and self-scores from tables: the benchmark's own logic, no generation."""

    name = "stand-in"

    def __init__(self, answer_mode, responses, inline, separate=None):
        self.answer_mode, self.responses, self.inline, self.separate = answer_mode, responses, inline, separate
        self.calls = []

    def answers(self, items, cache_key, mode=None, cache_dir=None):
        self.calls.append(("answers", cache_key, mode))
        return [
            {
                "id": it["id"],
                "answer": self.responses[it["instruction"]],
                "trace": {
                    "response": self.responses[it["instruction"]],
                    "self_score": self.inline[it["instruction"]],
                    "feedback": "fb",
                },
            }
            for it in items
        ]

    def self_scores(self, items, cache_key, via=None, cache_dir=None):
        self.calls.append(("self_scores", cache_key, via))
        return [{"score": self.separate[it["response"]], "feedback": "sep", "failure": None} for it in items]


def _data(tmp_path):
    path = tmp_path / "problems.jsonl"
    rows = [("a", "What is 2 + 3?", 5), ("b", "What is 4 + 4?", 8), ("c", "What is 6 - 1?", 5)]
    path.write_text("".join(json.dumps({"id": i, "instruction": q, "answer": f"#### {g}"}) + "\n" for i, q, g in rows))
    return path


def test_run_reads_the_inline_self_score_of_the_response(tmp_path):
    bench = create_benchmark("self_judgement", {"data": str(_data(tmp_path))})
    responses = {"What is 2 + 3?": "The answer is 5.", "What is 4 + 4?": "The answer is 9.", "What is 6 - 1?": "5"}
    inline = {"What is 2 + 3?": 9, "What is 4 + 4?": 3, "What is 6 - 1?": 3}
    model = StandIn("srt", responses, inline)
    result = bench.run(model, EvalContext(output_dir=tmp_path, cache_dir=tmp_path / "cache"))
    assert model.calls == [("answers", "word_problems-srt", "srt")]  # shares word_problems' generations
    assert [s["response_correct"] for s in result.samples] == [True, False, True]
    assert [s["self_score"] for s in result.samples] == [9, 3, 3]
    m = result.metrics
    # right {9, 3} vs wrong {3}: one win, one tie -> AUROC 75, agreement 1/2.
    assert m["auroc"] == 75.0 and (m["pairs"], m["pairs_agree"], m["pairs_tie"]) == (2, 1, 1)
    assert m["agreement"] == 50.0 and m["score_parse_rate"] == 100.0
    assert result.meta["scoring"] == "inline" and result.meta["score_table"]["3"] == {"right": 1, "wrong": 1}


def test_run_with_a_separate_self_scoring_call_for_plain_models(tmp_path):
    bench = create_benchmark("self_judgement", {"data": str(_data(tmp_path))})
    responses = {"What is 2 + 3?": "5", "What is 4 + 4?": "9", "What is 6 - 1?": "4"}
    model = StandIn("plain", responses, {q: None for q in responses}, separate={"5": 2, "9": 8, "4": None})
    result = bench.run(model, EvalContext(output_dir=tmp_path, cache_dir=tmp_path / "cache"))
    assert model.calls == [
        ("answers", "word_problems-plain", "plain"),
        ("self_scores", "self_judgement_scores", "critic_prompt"),
    ]
    m = result.metrics
    assert m["auroc"] == 0.0 and m["pairs_disagree"] == 1 and m["pairs_unscored"] == 1 and m["agreement"] == 0.0
    assert m["score_parse_rate"] == pytest.approx(200 / 3)
    assert any("no parsed self-score" in w for w in result.meta["warnings"])


# ----------------------------------------------------------------------- srt-eval, tiny model


def _srt_eval(args):
    from click.testing import CliRunner

    from srt.cli.eval import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_srt_eval_on_the_untrained_tiny_model(monkeypatch, tmp_path):
    """Random weights never write `Overall Score: [[n]]`: parse rate 0, AUROC undefined (with a warning)."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "eval"
    _srt_eval(
        ["run", "--model", "tiny", "--answer-mode", "srt", "--benchmarks", "self_judgement", "--limit", "3"]
        + ["--max-new-tokens", "8", "--output", str(out)]
    )
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["results"]["tiny"]["self_judgement"]
    assert entry["metrics"]["score_parse_rate"] == 0.0 and entry["metrics"]["auroc"] is None
    assert entry["metrics"]["n_responses"] == 3 and entry["metrics"]["pairs_agree"] == 0
    samples = [
        json.loads(line) for line in (out / "tiny" / "self_judgement" / "samples.jsonl").read_text().splitlines()
    ]
    assert [s["self_score"] for s in samples] == [None] * 3


# A tiny model fitted to answer two problems in the SRT format: right and scored 9, wrong and scored 3.
WORD_SRT = [
    {
        "instruction": "What is 2 + 3?",
        "response": "2 + 3 = 5. The answer is 5.",
        "feedback": render_feedback("- None.", "- Keep it.", 9),
        "refinement": "2 + 3 = 5. The answer is 5.",
    },
    {
        "instruction": "What is 4 + 4?",
        "response": "4 + 4 = 9. The answer is 9.",
        "feedback": render_feedback("- Step 1 is wrong.", "- Redo 4 + 4.", 3),
        "refinement": "4 + 4 = 8. The answer is 8.",
    },
]


@pytest.mark.slow
def test_srt_eval_self_judgement_of_a_tiny_model_that_writes_srt(tmp_path):
    from srt.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model_dir = train_srt_model(build_tiny_model(tokenizer), tokenizer, tmp_path / "srt-tiny", examples=WORD_SRT)
    data = tmp_path / "problems.jsonl"
    data.write_text(
        json.dumps({"id": "p1", "instruction": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"})
        + "\n"
        + json.dumps({"id": "p2", "instruction": "What is 4 + 4?", "answer": "4 + 4 = 8\n#### 8"})
        + "\n"
    )
    out = tmp_path / "eval"
    args = ["run", "--model", f"srt={model_dir}", "--mode", "srt=srt", "--benchmarks", "self_judgement,word_problems"]
    args += ["--set", f"benchmarks.self_judgement.data={data}", "--set", f"benchmarks.word_problems.data={data}"]
    _srt_eval(args + ["--max-new-tokens", "80", "--output", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    m = summary["results"]["srt"]["self_judgement"]["metrics"]
    assert m["score_parse_rate"] == 100.0 and (m["n_right"], m["n_wrong"]) == (1, 1)
    assert m["auroc"] == 100.0 and m["agreement"] == 100.0 and m["pairs_agree"] == 1
    samples = [json.loads(line) for line in (out / "srt" / "self_judgement" / "samples.jsonl").read_text().splitlines()]
    assert [(s["self_score"], s["response_correct"]) for s in samples] == [(9, True), (3, False)]
    # The word_problems run of the same model agrees on which response is right.
    wp = [json.loads(line) for line in (out / "srt" / "word_problems" / "samples.jsonl").read_text().splitlines()]
    assert [s["response_correct"] for s in wp] == [True, False]
