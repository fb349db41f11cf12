"""judge_agreement and refine_vs_rerank on tiny models (untrained: garbage; trained: real SRT output)."""

import json

import pytest
from eval_helpers import SRT_EXAMPLES, single_thread, train_srt_model

from srt.errors import ConfigError, RecordError
from srt.eval.model import EvalModel
from srt.eval.runner import run_eval
from srt.registry import create_benchmark

_threads = pytest.fixture(autouse=True, scope="module")(single_thread)
JUDGE = {"name": "length", "target_words": 4}


@pytest.fixture(scope="module")
def srt_model_dir(tmp_path_factory):
    from srt.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return train_srt_model(build_tiny_model(tokenizer), tokenizer, tmp_path_factory.mktemp("srt-tiny"))


def _samples(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hh_rlhf_transcripts_become_pairs(tmp_path):
    from srt_builtin.benchmarks.judge_agreement import load_pairs

    pairs, identity, skipped = load_pairs("fixture", None)
    assert len(pairs) == 16 and skipped == 0 and identity.startswith("hh_rlhf_pairs.jsonl:sha256:")
    assert pairs[0]["instruction"] == "How do I boil an egg?"
    assert pairs[0]["rejected"] == "Eggs are a food."
    multi = next(p for p in pairs if "Assistant:" in p["instruction"])  # the multi-turn fixture pair
    assert multi["instruction"].startswith("Human: I feel lonely") and multi["instruction"].endswith(
        "don't know anyone."
    )

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: good", "rejected": "\n\nHuman: b\n\nAssistant: bad"})
        + "\n"
        + json.dumps({"id": "x", "instruction": "q", "chosen": "yes", "rejected": "no"})
        + "\n"
    )
    pairs, _, skipped = load_pairs(str(data), None)
    assert skipped == 1 and pairs == [{"id": "x", "instruction": "q", "chosen": "yes", "rejected": "no"}]
    data.write_text('{"chosen": "a"}\n')
    with pytest.raises(RecordError, match=r"pairs.jsonl:1: needs string 'chosen' and 'rejected'"):
        load_pairs(str(data), None)
    with pytest.raises(ConfigError, match="scoring: Input should be 'auto', 'srt' or 'critic_prompt'"):
        create_benchmark("judge_agreement", {"scoring": "vibes"})


def test_judge_agreement_untrained_model_fails_to_parse_and_never_agrees(tiny_model_dir, tmp_path):
    model = EvalModel("tiny", str(tiny_model_dir), score_sampling={"max_new_tokens": 6})
    summary = run_eval([model], {"judge_agreement": {"limit": 3}}, tmp_path)
    entry = summary["results"]["tiny"]["judge_agreement"]
    assert entry["meta"]["scoring"] == "critic_prompt"  # plain model: the critic prompt as a user message
    assert entry["metrics"]["parse_failures"] == 3 and entry["metrics"]["agreement"] == 0
    assert entry["metrics"]["n_pairs"] == 3
    samples = _samples(tmp_path / "tiny" / "judge_agreement" / "samples.jsonl")
    assert all(s["outcome"] == "parse_failure" and s["failure_chosen"] for s in samples)


def test_judge_agreement_with_srt_self_critique(srt_model_dir, tmp_path):
    """The trained model really scores its own answers (6 and 3); equal scores are not agreement."""
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"id": f"p{i}", "instruction": ex["instruction"], "chosen": ex["response"], "rejected": ex["response"]}
            )
            + "\n"
            for i, ex in enumerate(SRT_EXAMPLES)
        )
    )
    model = EvalModel("srt", str(srt_model_dir), answer_mode="srt", score_sampling={"max_new_tokens": 40})
    summary = run_eval([model], {"judge_agreement": {"data": str(data)}}, tmp_path / "out")
    entry = summary["results"]["srt"]["judge_agreement"]
    assert entry["meta"]["scoring"] == "srt"
    samples = _samples(tmp_path / "out" / "srt" / "judge_agreement" / "samples.jsonl")
    assert [(s["score_chosen"], s["score_rejected"]) for s in samples] == [
        (ex["score"], ex["score"]) for ex in SRT_EXAMPLES
    ]
    assert [s["outcome"] for s in samples] == ["tie", "tie"]
    assert entry["metrics"]["agreement"] == 0 and entry["metrics"]["ties"] == 2
    assert entry["metrics"]["parse_failures"] == 0 and entry["metrics"]["score_parse_rate"] == 100
    assert entry["metrics"]["mean_score_chosen"] == pytest.approx(sum(ex["score"] for ex in SRT_EXAMPLES) / 2)
    assert entry["plots"]["self_scores_chosen"] == [ex["score"] for ex in SRT_EXAMPLES]


def test_refine_vs_rerank_on_an_srt_model(srt_model_dir, tmp_path):
    # Fixture items 0 and 1 are the two instructions the tiny model was trained on.
    model = EvalModel(
        "srt",
        str(srt_model_dir),
        answer_mode="srt",
        sampling={"max_new_tokens": 60},
        score_sampling={"max_new_tokens": 40},
    )
    summary = run_eval([model], {"refine_vs_rerank": {"limit": 2, "n": 2}}, tmp_path, judge=JUDGE)
    entry = summary["results"]["srt"]["refine_vs_rerank"]
    metrics = entry["metrics"]
    assert metrics["refine_parsed_rate"] == 100 and metrics["refine_fallback_rate"] == 0
    samples = _samples(tmp_path / "srt" / "refine_vs_rerank" / "samples.jsonl")
    by_instruction = {ex["instruction"]: ex for ex in SRT_EXAMPLES}
    for s in samples:
        assert s["refine"] == by_instruction[s["instruction"]]["refinement"]
        assert len(s["rerank_trace"]["candidates"]) == 2
    from alpaca_eval.metrics import pairwise_to_winrate

    prefs = [s["preference"] for s in samples]
    assert None not in prefs
    assert metrics["win_rate"] == pytest.approx(float(pairwise_to_winrate(prefs)["win_rate"]))
    assert entry["meta"]["judge"]["name"] == "length"
    assert not any("not marked answer_mode" in w for w in entry["meta"]["warnings"])
