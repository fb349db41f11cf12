"""alpaca_eval benchmark: judged preferences -> alpaca_eval's own win-rate numbers, offline LC win rate."""

import json
import math

import pytest

from srt.errors import ConfigError, PluginError, RecordError
from srt.eval.model import EvalModel
from srt.eval.runner import run_eval

# The example third-party critic (plugins/srt-critic-length), used by name through its entry point:
# deterministic and offline, so the judge's scores can be recomputed independently below.
JUDGE = {"name": "length", "target_words": 4}
# T=1 so the untrained tiny model writes varied (garbage) text of varied length, seeded per prompt.
SAMPLING = {"temperature": 1.0, "max_new_tokens": 12, "seed": 0}


def _samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_win_rate_is_alpaca_evals_on_the_judges_preferences(tiny_model_dir, tmp_path):
    from alpaca_eval.metrics import pairwise_to_winrate

    from srt_critic_length import LengthCritic

    model = EvalModel("tiny", str(tiny_model_dir), sampling=SAMPLING)
    summary = run_eval([model], {"alpaca_eval": {"limit": 12}}, tmp_path, judge=JUDGE)
    metrics = summary["results"]["tiny"]["alpaca_eval"]["metrics"]
    samples = _samples(tmp_path / "tiny" / "alpaca_eval" / "samples.jsonl")
    assert len(samples) == 12

    # Recompute the judge's scores and the preferences without the harness.
    critic = LengthCritic(target_words=4)
    prefs = []
    for s in samples:
        ref_score, model_score = critic.judge(s["output_1"])[2], critic.judge(s["output_2"])[2]
        assert (s["score_baseline"], s["score_model"]) == (ref_score, model_score)
        prefs.append(2.0 if model_score > ref_score else 1.0 if model_score < ref_score else 1.5)
    assert [s["preference"] for s in samples] == prefs
    assert len(set(prefs)) > 1, "fixture should give a mix of outcomes, or this test proves little"

    expected = pairwise_to_winrate(prefs)
    assert metrics["win_rate"] == pytest.approx(float(expected["win_rate"]))
    assert metrics["standard_error"] == pytest.approx(float(expected["standard_error"]))
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"]) == (
        expected["n_wins"],
        expected["n_wins_base"],
        expected["n_draws"],
    )
    assert metrics["avg_length"] == pytest.approx(sum(len(s["output_2"]) for s in samples) / 12)
    assert metrics["judge_failures"] == 0
    # The answers are the model's real generations (cached, keyed per prompt).
    assert all(s["trace"]["mode"] == "plain" and s["trace"]["num_new_tokens"] > 0 for s in samples)


def test_length_controlled_win_rate_runs_offline_and_says_when_it_does_not_apply():
    from alpaca_eval.metrics import glm_winrate

    from srt_builtin.benchmarks.alpaca_winrate import length_controlled

    original = glm_winrate.hf_hub_download
    # Longer model outputs win more often: the length-controlled rate must come out lower.
    annotations = [
        {
            "instruction": f"q{i}",
            "output_1": "r" * 50,
            "output_2": "m" * (20 + 10 * i),
            "generator_1": "ref",
            "generator_2": "m",
            "preference": 2.0 if i % 4 else 1.0,
        }
        for i in range(16)
    ] + [
        {
            "instruction": f"s{i}",
            "output_1": "r" * 50,
            "output_2": "m" * 10,
            "generator_1": "ref",
            "generator_2": "m",
            "preference": 1.0,
        }
        for i in range(8)
    ]
    result, warning = length_controlled(annotations, min_items=10)
    assert warning is None
    raw = sum(a["preference"] == 2.0 for a in annotations) / len(annotations) * 100
    assert 0 <= result["length_controlled_winrate"] < raw
    assert result["lc_standard_error"] is None  # constant predictions: no per-item spread to report
    assert glm_winrate.hf_hub_download is original  # the offline stand-in is removed again

    too_few, warning = length_controlled(annotations[:5], min_items=10)
    assert too_few["length_controlled_winrate"] is None and "lc_min_items" in warning
    one_sided = [{**a, "preference": 1.0} for a in annotations]
    none, warning = length_controlled(one_sided, min_items=10)
    assert none["length_controlled_winrate"] is None and "won no" in warning


def test_judge_failure_is_not_a_preference():
    """A pair the judge could not score is left out of the win rate (alpaca_eval drops it)."""
    from srt_builtin.benchmarks.alpaca_winrate import preference, winrate_metrics

    assert preference(None, 7) is None and preference(7, None) is None
    assert preference(5, 7) == 2.0 and preference(7, 5) == 1.0 and preference(6, 6) == 1.5
    metrics = winrate_metrics([{"preference": None}, {"preference": 2.0}, {"preference": 1.5}])
    assert metrics["n_total"] == 2 and metrics["win_rate"] == pytest.approx(75.0)
    assert winrate_metrics([{"preference": None}])["win_rate"] is None


def test_bad_settings_and_data_are_clear_errors(tmp_path):
    from srt.registry import create_benchmark

    with pytest.raises(ConfigError, match="needs a judge critic"):
        create_benchmark("alpaca_eval", {})
    with pytest.raises(ConfigError, match="limt: unknown key"):
        create_benchmark("alpaca_eval", {"judge": JUDGE, "limt": 3})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: needs a string 'output'"):
        create_benchmark("alpaca_eval", {"judge": JUDGE, "data": str(bad)})
    with pytest.raises(PluginError, match="unknown srt.benchmarks plugin 'alpaca'.*alpaca_eval"):
        run_eval([EvalModel("m", "tiny")], {"alpaca": {}}, tmp_path)


def test_json_data_file_and_model_outputs_are_cached(tiny_model_dir, tmp_path):
    data = tmp_path / "mine.json"
    data.write_text(
        json.dumps(
            [
                {"instruction": "Say hi.", "output": "Hi there, nice to meet you."},
                {"instruction": "Count to three.", "output": "1, 2, 3."},
            ]
        )
    )
    model = EvalModel("tiny", str(tiny_model_dir), sampling=SAMPLING)
    settings = {"alpaca_eval": {"data": str(data)}}
    first = run_eval([model], settings, tmp_path / "a", judge=JUDGE, cache_dir=tmp_path / "cache")
    entry = first["results"]["tiny"]["alpaca_eval"]
    assert entry["metrics"]["n_total"] == 2
    assert entry["metrics"]["length_controlled_winrate"] is None  # 2 items < lc_min_items
    assert any("lc_min_items" in w for w in entry["meta"]["warnings"])
    assert not math.isnan(entry["metrics"]["avg_length"])
    # A second run directory with the same cache: answers come from the cache, identical.
    second = run_eval([model], settings, tmp_path / "b", judge=JUDGE, cache_dir=tmp_path / "cache")
    a = _samples(tmp_path / "a" / "tiny" / "alpaca_eval" / "samples.jsonl")
    b = _samples(tmp_path / "b" / "tiny" / "alpaca_eval" / "samples.jsonl")
    assert [s["output_2"] for s in a] == [s["output_2"] for s in b]
    assert second["results"]["tiny"]["alpaca_eval"]["metrics"] == entry["metrics"]
    cache_lines = (tmp_path / "cache" / "tiny" / "answers.jsonl").read_text().splitlines()
    assert len(cache_lines) == 2  # generated once, not again
