"""Answer mode `gated` through `srt-eval` (issue 13 item 5): the SRT pass, then the refinement only when
the model's own re-score of it beats its response's. `--mode NAME=gated` runs end to end on a tiny model
trained to write SRT turns about arithmetic (one response wrong and its refinement right, one the
reverse); `word_problems` records the gate's choice per problem, and summary.json and report.md carry
how often it kept each and, with the gold answers, how often its choice was the right one."""

import json

import pytest
from eval_helpers import single_thread, train_srt_model

from srt.critic_template import render_feedback
from srt.eval.benchmark import ANSWER_MODES, writes_srt_turn
from srt.eval.report import GATE_COUNTS, GATE_NOTE, gate_metrics, metric_unit, render_markdown
from srt.eval.runner import ModelSpec

_threads = pytest.fixture(autouse=True, scope="module")(single_thread)

# The SRT turns the model learns, and the score it learns to give each refinement when it re-scores it
# (`rescore`): the gate keeps a right refinement (p0), keeps a right response (p1), and keeps a wrong
# refinement over a right response (p2).
ARITHMETIC = [
    {
        "instruction": "What is 2 + 3?",
        "response": "2 + 3 = 6. The answer is 6.",
        "feedback": render_feedback("The sum is wrong.", "Add again.", 3),
        "refinement": "2 + 3 = 5. The answer is 5.",
        "score": 3,
        "rescore": 9,
        "gold": 5,
    },
    {
        "instruction": "What is 4 + 4?",
        "response": "4 + 4 = 8. The answer is 8.",
        "feedback": render_feedback("Right, but terse.", "Show the step.", 8),
        "refinement": "4 and 4 make 9. The answer is 9.",
        "score": 8,
        "rescore": 2,
        "gold": 8,
    },
    {
        "instruction": "What is 3 + 3?",
        "response": "3 + 3 = 6. The answer is 6.",
        "feedback": render_feedback("No check.", "Check it.", 4),
        "refinement": "3 + 3 = 7. The answer is 7.",
        "score": 4,
        "rescore": 7,
        "gold": 6,
    },
]
RESCORES = [
    {
        "instruction": ex["instruction"],
        "response": ex["refinement"],
        "feedback": render_feedback("Checked.", "None.", ex["rescore"]),
        "score": ex["rescore"],
    }
    for ex in ARITHMETIC
]


@pytest.fixture(scope="module")
def arithmetic_model_dir(tmp_path_factory):
    from srt.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    out = tmp_path_factory.mktemp("srt-tiny-gated")
    return train_srt_model(build_tiny_model(tokenizer), tokenizer, out, examples=ARITHMETIC, rescores=RESCORES)


def test_gated_is_an_answer_mode_everywhere():
    assert ANSWER_MODES == ("plain", "srt", "gated")
    assert ModelSpec.model_fields["answer_mode"].annotation.__args__ == ANSWER_MODES
    assert [writes_srt_turn(m) for m in ("plain", "srt", "gated", "rerank", None)] == [False, True, True, False, False]
    from srt_builtin.benchmarks.lm_eval_bridge import LmEvalSettings
    from srt_builtin.benchmarks.word_problems import WordProblemsSettings

    for settings in (WordProblemsSettings, LmEvalSettings):
        assert "gated" in settings.model_fields["answer_mode"].annotation.__args__[0].__args__


def test_gate_metrics_count_the_choice_and_whether_it_was_right():
    samples = [
        # kept a right refinement over a wrong response: right
        {"gate": "refinement", "correct": True, "response_correct": False, "refinement_correct": True},
        # kept a right response over a wrong refinement: right
        {"gate": "response", "correct": True, "response_correct": True, "refinement_correct": False},
        # kept a wrong response over a right refinement (the refinement unscored): wrong
        {"gate": "response", "correct": False, "response_correct": False, "refinement_correct": True},
        # no refinement: nothing to choose
        {"gate": "response", "correct": False, "response_correct": False, "refinement_correct": None},
        # both right: the choice did not matter
        {"gate": "refinement", "correct": True, "response_correct": True, "refinement_correct": True},
    ]
    scores = [(3, 5), (5, 5), (4, None), (2, None), (6, 7)]
    for s, (own, again) in zip(samples, scores):
        s.update(self_score=own, refinement_score=again)
    assert gate_metrics(samples) == {
        "gate_kept_refinement": 2,
        "gate_kept_response": 3,
        "gate_unscored": 2,
        "gate_right": 2,
        "gate_wrong": 1,
    }
    # From a nested trace (alpaca_eval's samples) or lm-eval's srt_* keys; no correctness: counts only.
    traced = [{"trace": {"mode": "gated", "gate": "refinement", "self_score": 2, "refinement_score": 4}}]
    assert gate_metrics(traced) == {"gate_kept_refinement": 1, "gate_kept_response": 0, "gate_unscored": 0}
    bridged = [{"srt_gate": "response", "srt_self_score": 7, "srt_refinement_score": 7}]
    assert gate_metrics(bridged)["gate_kept_response"] == 1
    assert gate_metrics([{"trace": {"mode": "srt", "parsed": True}}, {"correct": True}]) == {}
    assert {metric_unit(m) for m in ("gate_kept_refinement", "gate_unscored", "gate_right", "gate_wrong")} == {"count"}


def test_srt_eval_run_with_a_gated_model_end_to_end(cli, arithmetic_model_dir, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"p{k}", "instruction": ex["instruction"], "answer": f"#### {ex['gold']}"}) + "\n"
            for k, ex in enumerate(ARITHMETIC)
        )
    )
    out = tmp_path / "eval"
    args = [
        *("--model", f"srt={arithmetic_model_dir}", "--model", f"x={arithmetic_model_dir}"),
        *("--mode", "srt=srt", "--mode", "x=gated", "--benchmarks", "word_problems"),
        *("--set", f"benchmarks.word_problems.data={data}", "--max-new-tokens", "80", "--output", out),
    ]
    code, stdout, stderr = cli("validate", *args)
    assert code == 0, stderr
    assert "(answer_mode gated, dtype auto, cpu, batch_size 8, max_new_tokens 80, re-score max_new_tokens 80)" in (
        stdout
    )
    assert "(answer_mode srt, dtype auto, cpu, batch_size 8, max_new_tokens 80)" in stdout

    code, stdout, stderr = cli("run", *args)
    assert code == 0, stderr
    samples = [json.loads(line) for line in (out / "x" / "word_problems" / "samples.jsonl").read_text().splitlines()]
    srt_samples = [
        json.loads(line) for line in (out / "srt" / "word_problems" / "samples.jsonl").read_text().splitlines()
    ]
    for s, srt, ex in zip(samples, srt_samples, ARITHMETIC):
        # The same SRT pass as srt mode (the trained response, feedback, score, refinement), then the re-score.
        assert s["mode"] == "gated" and s["response"] == srt["response"] == ex["response"]
        assert s["self_score"] == srt["self_score"] == ex["score"] and s["parsed"] and not s["fallback"]
        assert srt["answer"] == ex["refinement"] and s["refinement_score"] == ex["rescore"]
        assert s["refinement_correct"] == srt["correct"]  # srt mode answers with the refinement
    assert [s["gate"] for s in samples] == ["refinement", "response", "refinement"]
    assert [s["answer"] for s in samples] == [
        ARITHMETIC[0]["refinement"],
        ARITHMETIC[1]["response"],
        ARITHMETIC[2]["refinement"],
    ]
    assert [(s["response_correct"], s["refinement_correct"], s["correct"]) for s in samples] == [
        (False, True, True),  # the gate kept the right refinement
        (True, False, True),  # ... the right response
        (True, False, False),  # ... the wrong refinement
    ]

    summary = json.loads((out / "summary.json").read_text())
    entry = summary["results"]["x"]["word_problems"]
    m = entry["metrics"]
    assert {k: m[k] for k in GATE_COUNTS} == {
        "gate_kept_refinement": 2,
        "gate_kept_response": 1,
        "gate_unscored": 0,
        "gate_right": 2,
        "gate_wrong": 1,
    }
    assert (m["n_correct"], m["n_response_correct"], m["fixed_by_refinement"], m["broken_by_refinement"]) == (
        2,
        2,
        1,
        1,
    )
    assert m["srt_parse_rate"] == 100.0 and m["refinement_score_mean"] == 6.0
    assert {entry["units"][k] for k in GATE_COUNTS} == {"count"}
    assert summary["models"]["x"]["answer_mode"] == "gated" and entry["meta"]["answer_mode"] == "gated"
    srt_metrics = summary["results"]["srt"]["word_problems"]["metrics"]
    assert not set(GATE_COUNTS) & set(srt_metrics) and srt_metrics["n_correct"] == 1  # every refinement kept

    report = (out / "report.md").read_text().splitlines()
    header = next(line for line in report if line.startswith("| model | answer mode | accuracy"))
    columns = [c.strip() for c in header.strip("|").split("|")]

    def cells(prefix):
        row = next(line for line in report if line.startswith(prefix))
        return dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))

    gated, srt = cells("| x | gated |"), cells("| srt | srt |")
    assert [gated[k] for k in GATE_COUNTS] == ["2", "1", "0", "2", "1"]
    assert [srt[k] for k in GATE_COUNTS] == [""] * 5
    assert gated["accuracy (%)"] == "66.7 ± 27.2" and srt["accuracy (%)"] == "33.3 ± 27.2"
    assert GATE_NOTE in report


def test_a_bad_mode_is_still_one_error_line(cli, tmp_path):
    for command in ("validate", "run"):
        code, _, stderr = cli(
            command, "--model", "x=tiny", "--mode", "x=gate", "--benchmarks", "gsm8k", "--output", tmp_path / "o"
        )
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, stderr
        assert lines[0] == "Error: --mode x=gate: 'gate' is not an answer mode; use one of plain, srt, gated"
        code, _, stderr = cli(command, "--model", "tiny", "--answer-mode", "gate", "--benchmarks", "gsm8k")
        assert code == 2 and "'gate' is not one of 'plain', 'srt', 'gated'" in stderr
    assert not (tmp_path / "o").exists()


def test_report_note_only_with_gated_answers():
    summary = {
        "run": {"seed": 0, "package_versions": {}},
        "models": {"srt": {"answer_mode": "srt"}},
        "results": {"srt": {"word_problems": {"metrics": {"accuracy": 50.0, "srt_parse_rate": 100.0}}}},
    }
    assert GATE_NOTE not in render_markdown(summary)


def test_lm_eval_bridge_and_alpaca_eval_read_gated_traces():
    """The other benchmarks that answer in the model's mode: lm-eval's SrtLM asks for gated answers and
    records the gate per sample (srt_gate); alpaca_eval's answer stats count it."""
    from types import SimpleNamespace

    from srt_builtin.benchmarks.alpaca_winrate import answer_stats
    from srt_builtin.benchmarks.lm_eval_bridge import SrtLM, make_lm

    trace = {
        "mode": "gated",
        "response": "2",
        "refinement": "two",
        "gate": "response",
        "self_score": 5,
        "refinement_score": 5,
        "parsed": True,
        "fallback": False,
        "finish_reason": "eos",
    }
    modes = []

    class Stub:
        batch_size = 1
        tokenizer = SimpleNamespace(eos_token="</s>")

        def hf_lm(self, batch_size):
            return object()

        def answers(self, items, cache_key, mode, cache_dir):
            modes.append(mode)
            return [{"answer": "2", "trace": trace, "cached": False} for _ in items]

    lm = make_lm(Stub(), "gated")
    assert isinstance(lm, SrtLM)
    assert lm.generate_until([SimpleNamespace(args=("Q: 1 + 1?", {"until": ["\n\n"]}))]) == ["2"] and modes == ["gated"]
    assert lm.stats["gate_kept_response"] == 1 and lm.traces["Q: 1 + 1?"]["srt_gate"] == "response"
    assert gate_metrics([lm.traces["Q: 1 + 1?"]]) == {
        "gate_kept_refinement": 0,
        "gate_kept_response": 1,
        "gate_unscored": 0,
    }
    stats = answer_stats([{"trace": trace}, {"trace": {**trace, "gate": "refinement"}}])
    assert stats["srt_parsed"] == 2 and (stats["gate_kept_refinement"], stats["gate_kept_response"]) == (1, 1)


def test_srt_eval_generate_in_gated_mode(arithmetic_model_dir, tmp_path):
    from srt.eval.runner import generate_file

    questions = tmp_path / "q.jsonl"
    questions.write_text(
        "".join(json.dumps({"id": f"p{k}", "instruction": ex["instruction"]}) + "\n" for k, ex in enumerate(ARITHMETIC))
    )
    output = tmp_path / "a.jsonl"
    stats = generate_file(
        str(arithmetic_model_dir),
        questions,
        output,
        mode="gated",
        sampling={"max_new_tokens": 80},
        score_sampling={"max_new_tokens": 80},
    )
    assert (stats["gate_kept_refinement"], stats["gate_kept_response"], stats["parsed"]) == (2, 1, 3)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["gated"] * 3 and [r["trace"]["gate"] for r in rows] == [
        "refinement",
        "response",
        "refinement",
    ]
    assert stats["model"]["answer_mode"] == "gated"
