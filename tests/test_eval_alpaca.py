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


# -- judging: pairwise (alpaca_eval's own annotator, judge on a local OpenAI-compatible server) ----

PAIRWISE_SECRET = "sk-pairwise-test-0123456789abcdef"
# alpaca_eval_gpt4's prompt shows output_1 as "model_1" and output_2 as "model_2" (its own template).
# The answers are matched up to the closing brace, as the fixture's answers can hold triple quotes.
_ANSWER = r'"model": "NAME",\s*"answer": """(.*?)"""\s*\}'


def _shown(messages):
    """(instruction, first answer shown, second answer shown) from alpaca_eval_gpt4's prompt."""
    import re

    text = messages[-1]["content"]
    instruction = re.search(r'"instruction": """(.*?)""",\s*\}', text, re.S).group(1)
    first = re.search(_ANSWER.replace("NAME", "model_1"), text, re.S).group(1)
    second = re.search(_ANSWER.replace("NAME", "model_2"), text, re.S).group(1)
    return instruction, first, second


def _ranking(first_wins):
    # The answer format alpaca_eval_gpt4 asks for, read by alpaca_eval's ranking_parser.
    if first_wins:
        return "[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]"
    return "[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]"


def _first_wins(messages):
    """A judge with pure position bias: whatever is shown first wins."""
    return _ranking(True)


def _longer_wins(messages):
    """A judge without position bias: the longer answer wins (the first one on equal length)."""
    _, first, second = _shown(messages)
    return _ranking(len(first) >= len(second))


def _pairwise_run(tiny_model_dir, out, server, both_orders, cache, monkeypatch, limit=12):
    monkeypatch.setenv("OPENAI_API_KEY", PAIRWISE_SECRET)
    model = EvalModel("tiny", str(tiny_model_dir), sampling=SAMPLING)
    settings = {
        "alpaca_eval": {
            "limit": limit,
            "judging": "pairwise",
            "annotator": "alpaca_eval_gpt4",
            "both_orders": both_orders,
        }
    }
    judge = {"name": "openai", "model": "judge-model", "base_url": server.base_url, "max_concurrency": 2}
    summary = run_eval([model], settings, out, judge=judge, cache_dir=cache)
    return summary["results"]["tiny"]["alpaca_eval"], _samples(out / "tiny" / "alpaca_eval" / "samples.jsonl")


def _presentations(server):
    """What the judge was shown: [(instruction, first, second)] over every request the server got."""
    return [_shown(r.body["messages"]) for r in server.requests]


def test_pairwise_both_orders_really_swaps_against_a_position_biased_judge(tiny_model_dir, tmp_path, monkeypatch):
    from alpaca_eval.metrics import pairwise_to_winrate
    from chat_server import ChatServer

    cache = tmp_path / "cache"  # the model's answers are generated once and shared by both runs
    with ChatServer(responder=_first_wins) as server:
        single, single_samples = _pairwise_run(tiny_model_dir, tmp_path / "one", server, False, cache, monkeypatch)
        seen_single = _presentations(server)
        n_single = server.request_count
    with ChatServer(responder=_first_wins) as server:
        both, both_samples = _pairwise_run(tiny_model_dir, tmp_path / "two", server, True, cache, monkeypatch)
        seen_both = _presentations(server)
        auth = {r.authorization for r in server.requests}
        models = {r.body["model"] for r in server.requests}

    assert [s["output_2"] for s in single_samples] == [s["output_2"] for s in both_samples]
    pairs = [(s["instruction"], s["output_1"], s["output_2"]) for s in both_samples]
    assert all(ref != out for _, ref, out in pairs), "identical outputs are ties alpaca_eval never sends"

    # One order: each pair was shown once, in alpaca_eval's seeded order, and the biased judge's pick
    # is whatever came first, so the preference says which order the judge saw.
    assert n_single == 12 and len(set(seen_single)) == 12
    shown = {ins: (first, second) for ins, first, second in seen_single}
    expected_single = []
    for s, (ins, ref, out) in zip(single_samples, pairs):
        first, second = shown[ins]
        assert {first, second} == {ref, out}
        expected_single.append(1.0 if first == ref else 2.0)
        assert s["orders"] == [
            {
                "shown_first": "reference" if first == ref else "model",
                "preference": expected_single[-1],
                "judge_output": _ranking(True),
            }
        ]
    assert [s["preference"] for s in single_samples] == expected_single
    assert len(set(expected_single)) == 2, "alpaca_eval's random order should show both orders, or this proves little"

    # Both orders: the server saw every pair twice, once each way round, and the biased judge's two
    # opposite picks average to a tie on every pair.
    assert len(seen_both) == 24
    assert sorted(seen_both) == sorted([(i, r, o) for i, r, o in pairs] + [(i, o, r) for i, r, o in pairs])
    for s in both_samples:
        assert sorted(o["shown_first"] for o in s["orders"]) == ["model", "reference"]
        assert [o["preference"] for o in s["orders"] if o["shown_first"] == "reference"] == [1.0]
        assert [o["preference"] for o in s["orders"] if o["shown_first"] == "model"] == [2.0]
        assert s["preference"] == 1.5
    assert both["metrics"]["win_rate"] == pytest.approx(50.0) and both["metrics"]["n_draws"] == 12
    wins = pairwise_to_winrate(expected_single)
    assert single["metrics"]["win_rate"] == pytest.approx(float(wins["win_rate"]))
    assert single["metrics"]["win_rate"] != pytest.approx(50.0)

    # The judge was called as configured, with the key from the environment, which no file holds.
    assert models == {"judge-model"} and auth == {f"Bearer {PAIRWISE_SECRET}"}
    assert both["meta"]["judge"]["annotator"] == "alpaca_eval_gpt4" and "twice" in both["meta"]["judging"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PAIRWISE_SECRET.encode() not in path.read_bytes(), path


def test_pairwise_both_orders_agrees_with_an_unbiased_judge_and_is_cached(tiny_model_dir, tmp_path, monkeypatch):
    from chat_server import ChatServer

    cache = tmp_path / "cache"
    with ChatServer(responder=_longer_wins) as server:
        entry, samples = _pairwise_run(tiny_model_dir, tmp_path / "a", server, True, cache, monkeypatch, limit=8)
        assert server.request_count == 16
        # alpaca_eval's annotation cache (under the run's cache dir): a second run asks the judge nothing.
        assert list((cache / "alpaca_eval_pairwise").glob("alpaca_eval_gpt4-*.json"))
        again, _ = _pairwise_run(tiny_model_dir, tmp_path / "b", server, True, cache, monkeypatch, limit=8)
        assert server.request_count == 16
        assert again["metrics"] == entry["metrics"]
    expected = []
    for s in samples:
        ref, out = s["output_1"], s["output_2"]
        if len(ref) != len(out):
            expected.append(1.0 if len(ref) > len(out) else 2.0)  # the same winner in both positions
        else:
            expected.append(1.5)  # equal length: the first wins, once each
    assert [s["preference"] for s in samples] == expected
    for s, want in zip(samples, expected):
        if want != 1.5:
            assert [o["preference"] for o in s["orders"]] == [want, want]
    assert entry["metrics"]["n_wins"] == expected.count(2.0) and entry["metrics"]["n_wins_base"] == expected.count(1.0)


def test_pairwise_needs_a_judge_that_can_answer_alpaca_evals_prompt(tmp_path, monkeypatch):
    from srt.registry import create_benchmark

    with pytest.raises(PluginError, match="judging: pairwise cannot use judge 'length'.*critique format only"):
        run_eval([EvalModel("m", "tiny")], {"alpaca_eval": {"judging": "pairwise"}}, tmp_path / "out", judge=JUDGE)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="annotator 'no_such_annotator' is not an alpaca_eval annotator config"):
        create_benchmark("alpaca_eval", {"judge": "openai", "judging": "pairwise", "annotator": "no_such_annotator"})
    with pytest.raises(ConfigError, match="calls its judge with 'huggingface_api_completions'"):
        create_benchmark("alpaca_eval", {"judge": "openai", "judging": "pairwise", "annotator": "guanaco_33b"})
    with pytest.raises(ConfigError, match="`annotator` applies to `judging: pairwise` only"):
        create_benchmark("alpaca_eval", {"judge": JUDGE, "annotator": "alpaca_eval_gpt4"})
    # Score judging is described (and hashed) as before: existing runs keep their task config hash.
    described = create_benchmark("alpaca_eval", {"judge": JUDGE}).describe()
    assert "judging" not in described and "annotator" not in described
    pairwise = create_benchmark("alpaca_eval", {"judge": "openai", "judging": "pairwise"}).describe()
    assert pairwise["judging"] == "pairwise" and pairwise["annotator"] is None


def _shown_clf(messages):
    """(instruction, first, second) from the prompt of alpaca_eval's default AlpacaEval 2.0 annotator
    (weighted_alpaca_eval_gpt4_turbo: output_1 is model "m", output_2 is "M")."""
    import re

    text = messages[-1]["content"]
    instruction = re.search(r'"instruction": """(.*?)""",\s*\}', text, re.S).group(1)
    first = re.search(r'"model_identifier": "m",\s*"output": """(.*?)"""\s*\}', text, re.S).group(1)
    second = re.search(r'"model_identifier": "M",\s*"output": """(.*?)"""\s*\}', text, re.S).group(1)
    return instruction, first, second


def _better(a, b):
    """An arbitrary taste that ignores positions (and gives a mix of winners on any outputs)."""
    import hashlib

    return hashlib.sha256(a.encode()).hexdigest() > hashlib.sha256(b.encode()).hexdigest()


def _p_first(first, second):
    """The logprob judge's probability that the output shown first is better, with a position bias:
    0.8 when the better one is shown first, but 0.4 (not 0.2) when the worse one is."""
    return 0.8 if _better(first, second) else 0.4


def test_pairwise_default_annotator_is_alpaca_evals_logprob_weighted_judge(tiny_model_dir, tmp_path, monkeypatch):
    import math

    from chat_server import ChatServer

    def top_logprobs(messages):
        p = _p_first(*_shown_clf(messages)[1:])
        return [("m", math.log(p)), ("M", math.log(1 - p))]

    monkeypatch.setenv("OPENAI_API_KEY", PAIRWISE_SECRET)
    model = EvalModel("tiny", str(tiny_model_dir), sampling=SAMPLING)
    settings = {"alpaca_eval": {"limit": 6, "judging": "pairwise", "both_orders": True}}
    judge = {"name": "openai", "model": "gpt-4-1106-preview", "base_url": "http://127.0.0.1:1/v1"}
    with ChatServer(responder=lambda messages: "m") as server:
        server.top_logprobs = top_logprobs
        judge["base_url"] = server.base_url
        summary = run_eval([model], settings, tmp_path / "out", judge=judge)
        bodies = [r.body for r in server.requests]
    entry = summary["results"]["tiny"]["alpaca_eval"]
    samples = _samples(tmp_path / "out" / "tiny" / "alpaca_eval" / "samples.jsonl")
    assert entry["meta"]["judge"]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    # The annotator config's decoding: one token, its top logprobs.
    assert all(b["max_tokens"] == 1 and b["logprobs"] is True and b["top_logprobs"] == 5 for b in bodies)
    shown = [_shown_clf(b["messages"]) for b in bodies]
    assert len(shown) == 12
    for s in samples:
        ref, out = s["output_1"], s["output_2"]
        seen = [(f, sec) for ins, f, sec in shown if ins == s["instruction"]]
        assert sorted(seen) == sorted([(ref, out), (out, ref)])
        # alpaca_eval's logprob parser: preference = 2 - P(output shown as "m" wins), mapped back to
        # the reference-first encoding (1 = reference wins) for the model-first presentation.
        expected = [2 - _p_first(ref, out), 1 + _p_first(out, ref)]
        assert sorted(o["preference"] for o in s["orders"]) == pytest.approx(sorted(expected))
        assert s["preference"] == pytest.approx(sum(expected) / 2)
    assert len({round(s["preference"], 6) for s in samples}) > 1
    assert entry["metrics"]["win_rate"] == pytest.approx(
        float(
            __import__("alpaca_eval.metrics", fromlist=["x"]).pairwise_to_winrate([s["preference"] for s in samples])[
                "win_rate"
            ]
        )
    )
