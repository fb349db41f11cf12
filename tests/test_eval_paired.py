"""srt-eval's per-sample statistics (srt/eval/report.py): accuracy ± standard error, SRT fixed / broken
counts, paired gained / lost counts with the exact sign test, and the `compare:` setting's checks."""

import math
import random

import pytest

from srt.errors import ConfigError
from srt.eval.report import comparisons, correctness_metrics, paired_changes, render_markdown, sign_test


@pytest.mark.parametrize(
    "gained, lost, p",
    [
        (0, 0, 1.0),  # nothing changed
        (5, 0, 2 * 0.5**5),  # 0.0625
        (15, 0, 2 * 0.5**15),  # 6.1e-05: the demo's stage 1 SRT vs base
        (5, 4, 1.0),  # P(X <= 4) for n = 9 is exactly 1/2, doubled
        (9, 3, 2 * (1 + 12 + 66 + 220) / 2**12),  # 0.146
        (0, 1, 1.0),
        (2, 0, 0.5),
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # 0.0386
    ],
)
def test_sign_test_by_hand(gained, lost, p):
    assert sign_test(gained, lost) == pytest.approx(p, rel=1e-12)
    assert sign_test(lost, gained) == sign_test(gained, lost)  # two-sided


def test_sign_test_is_scipys_exact_binomial_test():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for n in range(1, 41):
        for k in range(n + 1):
            assert sign_test(k, n - k) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-15), (k, n)


def _samples(correct, response=None, parsed=None):
    rows = [{"id": f"q{i}", "correct": c} for i, c in enumerate(correct)]
    for i, row in enumerate(rows):
        if response is not None:
            row["response_correct"] = response[i]
        if parsed is not None:
            row["parsed"], row["fallback"] = parsed[i], not parsed[i]
    return rows


def test_correctness_metrics_of_plain_and_srt_samples():
    plain = correctness_metrics(_samples([True, False, False, False]))
    assert plain == {
        "accuracy": 25.0,
        "accuracy_stderr": pytest.approx(100 * math.sqrt(0.25 * 0.75 / 4)),  # 21.65
        "n_correct": 1,
        "n_samples": 4,
    }
    srt = correctness_metrics(
        _samples(
            correct=[True, True, False, True, False, True],
            response=[False, True, True, False, False, False],  # fixed: q0, q3, q5; broken: q2
            parsed=[True, True, True, False, True, True],
        )
    )
    assert srt["accuracy"] == pytest.approx(400 / 6) and srt["n_correct"] == 4
    assert srt["response_accuracy"] == pytest.approx(200 / 6) and srt["n_response_correct"] == 2
    assert srt["response_accuracy_stderr"] == pytest.approx(100 * math.sqrt((1 / 3) * (2 / 3) / 6))
    assert (srt["fixed_by_refinement"], srt["broken_by_refinement"]) == (3, 1)
    assert srt["srt_parse_rate"] == pytest.approx(500 / 6) and srt["srt_fallbacks"] == 1


@pytest.mark.parametrize(
    "samples",
    [[], [{"id": "a", "score": 3}], [{"id": "a", "correct": 1}], [{"id": "a", "correct": True}, {"id": "b"}]],
)
def test_no_correctness_metrics_without_a_boolean_correct_on_every_sample(samples):
    assert correctness_metrics(samples) == {}


def test_comparisons_pair_answers_with_answers_and_responses_with_responses():
    samples = {
        ("base", "wp"): _samples([True, False, False, False, False, False]),
        ("stage1", "wp"): _samples([True] * 6, response=[False, True, False, False, False, False]),
        ("stage2", "wp"): _samples([True, True, True, True, True, False], response=[True, True, True] + [False] * 3),
        ("stage2", "other"): [{"id": "x", "score": 1.0}],  # no per-sample correctness: no comparison
    }
    rows = comparisons([("stage1", "base"), ("stage2", "stage1"), ("stage2", "base")], samples)
    got = {(r["model"], r["answer"], r["baseline"], r["baseline_answer"]): (r["gained"], r["lost"]) for r in rows}
    assert got == {
        ("stage1", "answer", "base", "answer"): (5, 0),
        ("stage1", "response", "base", "answer"): (1, 1),  # a plain baseline has only its answer
        ("stage2", "answer", "stage1", "answer"): (0, 1),
        ("stage2", "response", "stage1", "response"): (2, 0),
        ("stage2", "answer", "base", "answer"): (4, 0),
        ("stage2", "response", "base", "answer"): (2, 0),
    }
    assert all(r["benchmark"] == "wp" and r["n_paired"] == 6 for r in rows)
    assert {r["sign_test_p"] for r in rows if (r["gained"], r["lost"]) == (5, 0)} == {0.0625}


def test_paired_changes_match_by_id_not_by_position():
    before = {f"q{i}": i % 2 == 0 for i in range(10)}
    after = {f"q{i}": i < 7 for i in range(12)}  # two extra ids the baseline never answered
    items = list(after.items())
    random.Random(0).shuffle(items)
    got = paired_changes(before, dict(items))
    # gained: q1, q3, q5 (right now, wrong before); lost: q8; q10 and q11 are not paired
    assert got == {"n_paired": 10, "gained": 3, "lost": 1, "sign_test_p": 2 * (1 + 4) / 16}


def test_report_shows_accuracy_with_its_error_and_the_paired_table():
    summary = {
        "run": {"seed": 0, "package_versions": {}},
        "models": {},
        "results": {
            "base": {"wp": {"metrics": correctness_metrics(_samples([True, False, False, False]))}},
            "srt": {"wp": {"metrics": correctness_metrics(_samples([True, True, False, False]))}},
        },
        "comparisons": comparisons(
            [("srt", "base")],
            {
                ("base", "wp"): _samples([True, False, False, False]),
                ("srt", "wp"): _samples([True, True, False, False]),
            },
        ),
    }
    text = render_markdown(summary)
    assert (
        "| model | answer mode | accuracy (%) | n_correct | n_samples | srt_parse_rate (%) | srt_fallback_rate (%) |"
        in text
    )
    assert "| base | n/a | 25.0 ± 21.7 | 1 | 4 | – | – |" in text and "| srt | n/a | 50.0 ± 25.0 | 2 | 4 |" in text
    assert "accuracy_stderr" not in text  # folded into its metric
    assert "| wp | srt | base | 1 | 0 | 1 |" in text


def test_compare_names_models_of_the_run(tmp_path):
    from srt.eval.model import EvalModel
    from srt.eval.plan import plan_eval

    models = [EvalModel("base", "tiny"), EvalModel("srt", "tiny", answer_mode="srt")]
    benchmarks = {"judge_agreement": {"limit": 1}}
    plan = plan_eval(models, benchmarks, tmp_path / "out", compare=[["srt", "base"]])
    assert plan.compare == [("srt", "base")] and "compare srt with base" in plan.describe()
    for compare, message in [
        ([["srt", "stage9"]], r"compare\[0\]: no model named 'stage9' in this run \(models: base, srt\)"),
        ([["srt", "srt"]], r"compare\[0\]: compares 'srt' with itself"),
        ([["srt"]], r"compare\[0\]: a \[model, baseline\] pair of model names"),
        (["srt"], r"compare\[0\]: a \[model, baseline\] pair"),
    ]:
        with pytest.raises(ConfigError, match=message):
            plan_eval(models, benchmarks, tmp_path / "out", compare=compare)
    assert not (tmp_path / "out").exists()  # the plan writes nothing


def test_compare_in_the_eval_config(tmp_path):
    from srt.eval.runner import cli_inputs, load_eval_config

    path = tmp_path / "eval.yaml"
    path.write_text("models: [{name: a, path: tiny}, {name: b, path: tiny}]\ncompare: [[b, a]]\n")
    assert load_eval_config(path).compare == [("b", "a")]
    assert cli_inputs(config_path=path)["compare"] == [["b", "a"]]
    assert cli_inputs(config_path=path, overrides=["compare=[]"])["compare"] == []
    path.write_text("compare: [[b, a, c]]\n")
    with pytest.raises(ConfigError, match="eval.yaml: invalid config: compare.0"):
        load_eval_config(path)
