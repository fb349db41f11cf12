"""Self-refinement inference on the tiny model: fallback on garbage, refinement on real SRT output."""

import pytest
from eval_helpers import SRT_EXAMPLES, single_thread, srt_turn, train_srt_model

from srt.errors import ConfigError
from srt.generation import Generator, SamplingConfig
from srt.inference import SelfRefiner, strip_srt_tail

_threads = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def srt_model_dir(tmp_path_factory):
    from srt.tiny import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return train_srt_model(build_tiny_model(tokenizer), tokenizer, tmp_path_factory.mktemp("srt-tiny"))


@pytest.fixture(scope="module")
def srt_generator(srt_model_dir):
    return Generator.from_pretrained(str(srt_model_dir), dtype="float32", batch_size=4)


def test_unparseable_output_falls_back_to_the_response_and_is_counted(tiny_model, tiny_tokenizer):
    refiner = SelfRefiner(Generator(tiny_model, tiny_tokenizer), SamplingConfig(temperature=1.0, max_new_tokens=10))
    answers = refiner.answer(["Hi", "What is 2+2?", "Name a color."])
    for a in answers:
        assert a.mode == "srt" and a.fallback and not a.parsed and a.refinement is None
        assert a.failure == "missing_feedback"
        assert a.answer == a.response == a.raw.strip()  # untrained: no header, the whole text is the response
        assert a.num_new_tokens > 0
    assert refiner.stats["answered"] == 3
    assert refiner.stats["fallback_unparseable"] == 3
    assert refiner.stats["parsed"] == 0


def test_well_formed_srt_output_answers_with_the_refinement(srt_generator):
    refiner = SelfRefiner(srt_generator, SamplingConfig(max_new_tokens=80))
    answers = refiner.answer([ex["instruction"] for ex in SRT_EXAMPLES])
    for answer, ex in zip(answers, SRT_EXAMPLES):
        assert answer.raw == srt_turn(ex)  # the model really generated the SRT chain
        assert answer.parsed and not answer.fallback and answer.failure is None
        assert answer.answer == answer.refinement == ex["refinement"]
        assert answer.response == ex["response"]
        assert answer.self_score == ex["score"]
        assert f"Overall Score: [[{ex['score']}]]" in answer.feedback
        assert answer.finish_reason == "eos"
    assert refiner.stats["parsed"] == 2 and refiner.stats["fallback_unparseable"] == 0


def test_truncated_chain_falls_back_and_counts_truncation(srt_generator):
    # Cut before the refinement header: no refinement, so the response is the answer.
    refiner = SelfRefiner(srt_generator, SamplingConfig(max_new_tokens=15))
    (answer,) = refiner.answer([SRT_EXAMPLES[0]["instruction"]])
    assert "### Feedback" in answer.raw and "### Improved Response" not in answer.raw
    assert answer.fallback and answer.answer == SRT_EXAMPLES[0]["response"]
    assert answer.finish_reason == "length"
    assert refiner.stats["truncated"] == 1 and refiner.stats["fallback_unparseable"] == 1


def test_plain_mode_stops_before_the_srt_tail(srt_generator):
    refiner = SelfRefiner(srt_generator, SamplingConfig(max_new_tokens=80))
    answers = refiner.plain([ex["instruction"] for ex in SRT_EXAMPLES])
    assert [a.answer for a in answers] == [ex["response"] for ex in SRT_EXAMPLES]
    assert all(a.finish_reason == "stop" and a.num_new_tokens < 20 for a in answers)


def test_self_score_and_rerank_pick_the_best_scored_candidate(srt_generator):
    score_sampling = SamplingConfig(max_new_tokens=40)
    refiner = SelfRefiner(
        srt_generator,
        SamplingConfig(max_new_tokens=40),
        candidate_sampling=SamplingConfig(temperature=0.7, max_new_tokens=40, seed=1),
        score_sampling=score_sampling,
    )
    scores = refiner.score([ex["instruction"] for ex in SRT_EXAMPLES], [ex["response"] for ex in SRT_EXAMPLES])
    assert [s.score for s in scores] == [ex["score"] for ex in SRT_EXAMPLES]
    assert all("Weaknesses:" in s.feedback and "### Improved Response" not in s.feedback for s in scores)

    answers = refiner.rerank([ex["instruction"] for ex in SRT_EXAMPLES], n=3)
    for answer in answers:
        assert answer.mode == "rerank" and len(answer.candidates) == 3
        values = [c["score"] if c["score"] is not None else 0 for c in answer.candidates]
        best = values.index(max(values))  # ties: the first sampled
        assert answer.answer == answer.candidates[best]["response"]
        assert answer.self_score == answer.candidates[best]["score"]
        assert all("### Feedback" not in c["response"] for c in answer.candidates)
    assert refiner.stats["scored"] == 2 + 6
    with pytest.raises(ConfigError, match="n must be >= 1"):
        refiner.rerank(["x"], n=0)


def test_unscored_candidates_rank_last(tiny_model, tiny_tokenizer):
    """Garbage self-scores: no candidate scores, the first sample is kept and counted."""
    refiner = SelfRefiner(
        Generator(tiny_model, tiny_tokenizer),
        candidate_sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
        score_sampling=SamplingConfig(max_new_tokens=6),
    )
    (answer,) = refiner.rerank(["Hi"], n=2, via="critic_prompt")
    assert [c["score"] for c in answer.candidates] == [None, None]
    assert answer.answer == answer.candidates[0]["response"] and answer.self_score is None
    assert refiner.stats["rerank_all_unscored"] == 1 and refiner.stats["score_parse_failures"] == 2


def test_strip_srt_tail():
    assert strip_srt_tail("Paris.\n\n### Feedback\nWeaknesses: x") == "Paris."
    assert strip_srt_tail("Paris.\n## feedback\nx") == "Paris."
    # Only a header line cuts: a sentence about feedback stays.
    text = "Give feedback: ### Feedback is a header.\nMore."
    assert strip_srt_tail(text) == text
    assert strip_srt_tail("  plain answer \n") == "plain answer"


class _Scripted:
    """A generator whose SRT pass and self-scores are scripted: the gate's logic, case by case."""

    def __init__(self, turns, rescores):
        self.turns, self.rescores, self.scored = turns, rescores, []

    def chat(self, prompts, sampling, system_prompt=None, assistant_prefixes=None, desc=None, **_):
        from srt.generation import GenerationOutput

        if assistant_prefixes is None:  # the SRT pass
            texts = [self.turns[p] for p in prompts]
        else:  # the re-score of each refinement, placed in the response slot
            self.scored += list(prompts)
            texts = [self.rescores[p] for p in prompts]
        return [GenerationOutput(t, 1, 1, "eos") for t in texts]


def test_gate_keeps_the_refinement_only_when_its_rescore_beats_the_response():
    from srt.critic_template import render_feedback, render_srt_turn

    def turn(score, refinement="Better."):
        return render_srt_turn("First try.", render_feedback("w", "s", score), refinement)

    turns = {"up": turn(4), "tie": turn(5), "down": turn(7), "none": "just an answer", "unscored": turn(3)}
    rescores = {"up": "Overall Score: [[6]]", "tie": "Overall Score: [[5]]", "down": "Overall Score: [[2]]"}
    rescores["unscored"] = "no score here"
    refiner = SelfRefiner(_Scripted(turns, rescores))
    answers = {a.instruction: a for a in refiner.run(list(turns), mode="gated")}
    assert answers["up"].answer == "Better." and answers["up"].gate == "refinement"
    assert answers["up"].refinement_score == 6 and answers["up"].self_score == 4
    for key in ("tie", "down", "none", "unscored"):  # not strictly better: the response is the answer
        assert answers[key].answer == answers[key].response and answers[key].gate == "response", key
    assert answers["none"].refinement_score is None and "none" not in refiner.generator.scored  # nothing to re-score
    assert all(a.mode == "gated" for a in answers.values())
    assert refiner.stats["gate_kept_refinement"] == 1 and refiner.stats["gate_kept_response"] == 4
    assert refiner.stats["gate_unscored"] == 2 and refiner.stats["answered"] == 5


def test_gated_mode_on_the_tiny_srt_model(srt_generator):
    refiner = SelfRefiner(
        srt_generator, SamplingConfig(max_new_tokens=80), score_sampling=SamplingConfig(max_new_tokens=40)
    )
    instructions = [ex["instruction"] for ex in SRT_EXAMPLES]
    answers = refiner.gated(instructions)
    rescored = refiner.score(instructions, [ex["refinement"] for ex in SRT_EXAMPLES])
    for answer, ex, again in zip(answers, SRT_EXAMPLES, rescored):
        assert answer.response == ex["response"] and answer.refinement == ex["refinement"]
        assert answer.self_score == ex["score"] and answer.refinement_score == again.score  # a separate call
        wins = again.score is not None and again.score > ex["score"]
        assert answer.answer == (ex["refinement"] if wins else ex["response"])
    assert refiner.stats["gate_kept_refinement"] + refiner.stats["gate_kept_response"] == 2


def test_eval_model_answers_in_gated_mode_and_caches_by_score_sampling(srt_model_dir, tmp_path, monkeypatch):
    from srt.eval.model import EvalModel

    items = [{"id": f"e{k}", "instruction": ex["instruction"]} for k, ex in enumerate(SRT_EXAMPLES)]
    calls = []
    gated = SelfRefiner.gated
    monkeypatch.setattr(SelfRefiner, "gated", lambda self, ins: calls.append(len(ins)) or gated(self, ins))

    def answers(max_new_tokens):
        model = EvalModel(
            "srt",
            str(srt_model_dir),
            answer_mode="srt",
            sampling={"max_new_tokens": 80},
            score_sampling={"max_new_tokens": max_new_tokens},
        )
        return model.answers(items, "k", mode="gated", cache_dir=tmp_path)

    first = answers(40)
    assert [r["trace"]["mode"] for r in first] == ["gated", "gated"]
    assert all(r["trace"]["gate"] in ("refinement", "response") for r in first)
    again = answers(40)
    assert [r["answer"] for r in again] == [r["answer"] for r in first] and calls == [2]  # cached
    answers(30)
    assert calls == [2, 2]  # another self-score decoding is another answer
