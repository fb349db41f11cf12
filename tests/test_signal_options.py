"""Stage-2 signal options (issue 13 item 5): each option's default is today's behaviour, and each
does what its config reference says on the tiny model."""

import pytest
import torch
from test_sft_module import records

from srt.config import DPOConfig, RunConfig, SFTConfig, load_config
from srt.data import SFTDataModule
from srt.errors import ConfigError
from srt.training.sft import SFTModule

# -- sft.segment_weights ---------------------------------------------------------------------------


def _batches(tokenizer, weights=None, packing=False, batch_size=4):
    config = SFTConfig(
        micro_batch_size=batch_size,
        max_length=256,
        packing=packing,
        **({"segment_weights": weights} if weights is not None else {}),
    )
    dm = SFTDataModule(tokenizer, config, train_records=records())
    dm.setup()
    return list(dm.predict_dataloader())


def _loss_and_grad(module, batch):
    module.model.zero_grad()
    loss, _ = module.masked_lm_loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters() if p.grad is not None]


def test_segment_weights_default_is_the_plain_token_mean(tiny_model, tiny_tokenizer):
    import torch.nn.functional as F

    assert SFTConfig().weighted_segments() is None
    assert SFTConfig(segment_weights={"feedback": 1.0}).weighted_segments() is None
    (batch,) = _batches(tiny_tokenizer)
    assert "loss_weights" not in batch  # defaults: no weights stored, the old code path
    module = SFTModule(tiny_model, tiny_tokenizer, config=SFTConfig())
    module.configure_model()
    with torch.no_grad():
        loss, n = module.masked_lm_loss(batch)
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Weights of exactly 1.0 carried in the batch give the same loss as no weights.
    ones = dict(batch, loss_weights=torch.ones_like(batch["labels"], dtype=torch.float32))
    with torch.no_grad():
        assert module.masked_lm_loss(ones)[0].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("packing", [False, True])
def test_segment_weights_scale_the_gradient_of_their_segment(tiny_model, tiny_tokenizer, packing):
    module = SFTModule(tiny_model, tiny_tokenizer, config=SFTConfig())
    module.configure_model()
    module.model.train(False)
    (plain,) = _batches(tiny_tokenizer, packing=packing)
    (weighted,) = _batches(tiny_tokenizer, {"feedback": 2.0, "refinement": 3.0}, packing=packing)
    (fb_only,) = _batches(tiny_tokenizer, {"response": 0.0, "feedback": 1.0, "refinement": 0.0, "eos": 0.0}, packing)
    (ref_only,) = _batches(tiny_tokenizer, {"response": 0.0, "feedback": 0.0, "refinement": 1.0, "eos": 0.0}, packing)
    assert torch.equal(weighted["input_ids"], plain["input_ids"]) and torch.equal(weighted["labels"], plain["labels"])
    # Only trained tokens carry a weight; feedback tokens 2.0, refinement tokens 3.0.
    w = weighted["loss_weights"]
    trained = plain["labels"] != -100
    assert torch.all(w[~trained] == 0) and set(w[trained].unique().tolist()) == {1.0, 2.0, 3.0}
    l1, g1 = _loss_and_grad(module, plain)
    lw, gw = _loss_and_grad(module, weighted)
    lf, gf = _loss_and_grad(module, fb_only)
    lr, gr = _loss_and_grad(module, ref_only)
    # weights (1, 2, 3, 1) = all ones + 1 x feedback + 2 x refinement: linear in the loss and its gradient.
    assert lw.item() == pytest.approx((l1 + lf + 2 * lr).item(), rel=1e-5)
    for a, b, c, d in zip(gw, g1, gf, gr):
        assert torch.allclose(a, b + c + 2 * d, atol=1e-6, rtol=1e-4)
    assert lf > 0 and lr > 0


def test_segment_weights_are_validated_early():
    with pytest.raises(ConfigError, match="unknown segments"):
        load_config(None, ["sft.segment_weights={critique: 2.0}"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_config(None, ["sft.segment_weights={feedback: -1}"])
    cfg = load_config(None, ["sft.segment_weights={feedback: 2}"])
    assert cfg.sft.segment_weights == {"response": 1.0, "feedback": 2.0, "refinement": 1.0, "eos": 1.0}


# -- dpo.rpo_alpha ---------------------------------------------------------------------------------


def test_rpo_alpha_is_trl_name_and_reads_the_old_one():
    assert DPOConfig().rpo_alpha == 0.0
    assert DPOConfig(nll_weight=0.3).rpo_alpha == 0.3
    assert load_config(None, ["dpo.nll_weight=0.5"]).dpo.rpo_alpha == 0.5
    with pytest.raises(ConfigError, match="rpo_alpha only"):
        load_config(None, ["dpo.nll_weight=0.5", "dpo.rpo_alpha=0.5"])
    with pytest.raises(ConfigError):
        load_config(None, ["dpo.rpo_alpha=-1"])
    assert "rpo_alpha" in RunConfig().dpo.model_dump()


# -- generation.response.num_samples + filter.balance_scores / max_score_share ------------------------


def _instructions(n):
    from srt.records import InstructionRecord

    return [InstructionRecord(id=f"q{i}", instruction=f"What is {i} + {i}?", reference=str(2 * i)) for i in range(n)]


def test_num_samples_gives_unique_ids_and_resumes_what_a_fresh_run_draws(tiny_model_dir, tmp_path):
    from srt.generation import Generator
    from srt.pipeline import feedback as fb

    gen = Generator.from_pretrained(str(tiny_model_dir), dtype="float32", batch_size=4)
    kwargs = dict(sampling_kwargs={"temperature": 0.7, "max_new_tokens": 6}, seed=3, stage=1, chunk_size=2)
    fresh = fb.generate_responses(gen, _instructions(3), tmp_path / "a" / "responses.jsonl", num_samples=3, **kwargs)
    assert [r.id for r in fresh] == [f"q{i}#s{k}" for i in range(3) for k in range(3)]
    assert [(r.meta["instruction_id"], r.meta["sample"]) for r in fresh] == [
        (f"q{i}", k) for i in range(3) for k in range(3)
    ]
    assert len({r.response for r in fresh}) > 3  # each sample draws from its own stream
    assert {fb.instruction_of(r) for r in fresh} == {"q0", "q1", "q2"}
    # A run killed after some chunks resumes the rest, and gets what the fresh run got.
    path = tmp_path / "b" / "responses.jsonl"
    path.parent.mkdir()
    lines = (tmp_path / "a" / "responses.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]))
    calls = []

    class Counting:
        def chat(self, prompts, *args, **kw):
            calls.append(len(prompts))
            return gen.chat(prompts, *args, **kw)

    resumed = fb.generate_responses(Counting(), _instructions(3), path, num_samples=3, **kwargs)
    assert sum(calls) == 5 and [r.model_dump() for r in resumed] == [r.model_dump() for r in fresh]
    # One sample per instruction: the ids and records of before (no sample meta).
    one = fb.generate_responses(gen, _instructions(2), tmp_path / "c" / "responses.jsonl", **kwargs)
    assert [r.id for r in one] == ["q0", "q1"] and all("sample" not in r.meta for r in one)


def test_a_sample_id_that_clashes_with_an_instruction_id_is_an_error(tmp_path):
    from srt.errors import RecordError
    from srt.pipeline import feedback as fb
    from srt.records import InstructionRecord

    clash = [InstructionRecord(id="a", instruction="x"), InstructionRecord(id="a#s1", instruction="y")]
    with pytest.raises(RecordError, match="a#s1"):
        fb.expand_samples(clash, 2)


def _scored(instruction, sample, score):
    from srt.records import Feedback, FeedbackRecord

    return FeedbackRecord(
        id=f"{instruction}#s{sample}",
        instruction="q",
        response=f"r{sample}",
        stage=1,
        feedback=Feedback(weaknesses="w", suggestions="s", score=score, raw=""),
        refinement="better",
        refinement_score=10,
        meta={"instruction_id": instruction, "sample": sample},
    )


def test_balance_min_max_keeps_the_lowest_and_highest_per_instruction():
    from collections import Counter

    from srt.pipeline import feedback as fb

    kept = [_scored("a", 0, 3), _scored("a", 1, 8), _scored("a", 2, 3), _scored("a", 3, 8), _scored("a", 4, 5)]
    kept += [_scored("b", 0, 2), _scored("b", 1, 2)] + [_scored("c", 0, 9)]
    out = fb.FilterOutcome(kept=list(kept), counters=Counter(kept=len(kept)))
    fb.balance(out, fb.FilterRule(balance_scores="min_max"))
    assert [r.id for r in out.kept] == ["a#s0", "a#s1", "b#s0", "c#s0"]
    assert out.counters == Counter(kept=4, balanced_out=4)
    assert {r["id"] for r in out.rejects} == {"a#s2", "a#s3", "a#s4", "b#s1"}
    assert all(r["reason"] == "balanced_out" and r["record"]["id"] == r["id"] for r in out.rejects)
    # Defaults change nothing.
    same = fb.FilterOutcome(kept=list(kept), counters=Counter(kept=len(kept)))
    fb.balance(same, fb.FilterRule())
    assert same.kept == kept and not same.rejects


def test_max_score_share_caps_every_score():
    from collections import Counter

    from srt.pipeline import feedback as fb

    assert fb.score_cap([85, 10, 5], 0.5) == 15  # 15 / (15 + 10 + 5) = 0.5
    assert fb.score_cap([85, 10, 5], 1.0) == 85
    assert fb.score_cap([40, 3], 0.4) == 3  # fewer than 1 / share scores: cut to the rarest
    kept = [_scored(f"w{i}", 0, 2) for i in range(17)] + [_scored(f"r{i}", 0, 9) for i in range(3)]
    out = fb.FilterOutcome(kept=list(kept), counters=Counter(kept=20))
    fb.balance(out, fb.FilterRule(max_score_share=0.6, seed=1))
    scores = Counter(r.feedback.score for r in out.kept)
    assert scores == {2: 4, 9: 3} and out.counters["score_capped"] == 13 and out.counters["kept"] == 7
    again = fb.FilterOutcome(kept=list(kept), counters=Counter(kept=20))
    fb.balance(again, fb.FilterRule(max_score_share=0.6, seed=1))
    assert [r.id for r in again.kept] == [r.id for r in out.kept]  # seeded: the same choice every time


def test_new_options_at_their_defaults_leave_step_fingerprints_as_they_were():
    from srt.pipeline.steps import plan_steps

    base = {"data": {"stage1": {"path": "x.jsonl"}, "stage2": {"path": "y.jsonl"}}}
    steps = {s.name: s.settings for s in plan_steps(RunConfig.model_validate(base))}
    flat = {k for settings in steps.values() for k in settings}
    assert not {k for k in flat if "num_samples" in k or "segment_weights" in k or "balance" in k or "share" in k}
    assert "dpo.nll_weight" in steps["stage2.round1.dpo"] and "dpo.rpo_alpha" not in steps["stage2.round1.dpo"]
    changed = RunConfig.model_validate(
        {
            **base,
            "generation": {"response": {"num_samples": 4}},
            "filter": {"balance_scores": "min_max"},
            "sft": {"segment_weights": {"feedback": 2}},
        }
    )
    new = {s.name: s.settings for s in plan_steps(changed)}
    assert new["stage1.responses"]["generation.response.num_samples"] == 4
    assert new["stage1.critic"]["filter.balance_scores"] == "min_max"
    assert new["stage1.sft"]["sft.segment_weights.feedback"] == 2.0


@pytest.mark.slow
def test_stage1_with_several_samples_and_balance_resumes_without_new_critic_calls(tmp_path, tiny_model_dir):
    import json
    from pathlib import Path

    from test_pipeline import tiny_config

    from srt.pipeline import feedback as fb
    from srt.pipeline.stage1 import run_stage1
    from srt.records import FeedbackRecord, read_jsonl

    cfg = RunConfig.model_validate(
        tiny_config(
            tmp_path,
            tiny_model_dir,
            **{"generation.response.num_samples": 3, "filter.balance_scores": "min_max", "data.stage1.limit": 4},
        )
    )
    run_stage1(cfg)
    out = Path(cfg.output_dir) / "stage1"
    responses = list(read_jsonl(out / "responses.jsonl", FeedbackRecord))
    assert len(responses) == 12 == len({r.id for r in responses})
    kept = list(read_jsonl(out / "records.jsonl", FeedbackRecord))
    per_instruction = {}
    for r in kept:
        per_instruction.setdefault(r.meta["instruction_id"], []).append(r.feedback.score)
    assert all(len(s) <= 2 and (len(s) == 1 or s[0] != s[1]) for s in per_instruction.values())
    report = json.loads((out / "report.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert report["counters"]["total"] == 12 == len(kept) + len(rejects)
    assert report["counters"]["kept"] == len(kept)
    assert sum(report["kept_response_scores"].values()) == len(kept)
    assert "kept for training (after balancing)" in (out / "report.md").read_text()
    calls = (out / "critic_calls.jsonl").read_bytes()
    assert len(list(read_jsonl(out / "critic_calls.jsonl", fb.CriticCall))) == 24
    # A second run redoes (and pays) nothing.
    run_stage1(cfg)
    assert (out / "critic_calls.jsonl").read_bytes() == calls


# -- stage2.answer_checker: pair precision (reported, never used to choose) ---------------------------


def _pair(i, response, refinement, reference="#### 5"):
    from srt.records import FeedbackRecord

    return FeedbackRecord(
        id=f"p{i}", instruction="q", response=response, refinement=refinement, reference=reference, stage=2
    )


def test_pair_precision_counts_chosen_right_and_rejected_wrong():
    from srt.pipeline.pair_precision import pair_precision

    kept = [
        _pair(0, "It is 4.", "The answer is 5."),  # right pair
        _pair(1, "It is 4.", "The answer is 5."),
        _pair(2, "It is 5.", "The answer is 5."),  # both right
        _pair(3, "It is 5.", "The answer is 7."),  # inverted
        _pair(4, "It is 5.", "The answer is 7.", reference=None),  # unchecked
    ]
    rejects = [{"id": "p9", "reason": "refinement_not_better", "kept": _pair(9, "2", "3").model_dump(mode="json")}]
    rejects.append({"id": "p8", "reason": "parse_failure:x"})  # never ranked: not a candidate
    out = pair_precision("word_problems", kept, rejects)
    assert out["pairs"] == {
        "n": 5,
        "chosen_right_rejected_wrong": 2,
        "both_right": 1,
        "both_wrong": 0,
        "inverted": 1,
        "unchecked": 1,
        "precision": 0.5,
        "inverted_share": 0.25,
    }
    assert (
        out["candidates"]["n"] == 6 and out["candidates"]["both_wrong"] == 1 and out["candidates"]["precision"] == 0.4
    )


def test_answer_checker_is_checked_by_the_plan(tmp_path, tiny_model_dir):
    from srt.pipeline.plan import plan_run

    data = tmp_path / "s2.jsonl"
    data.write_text('{"id": "a", "instruction": "What is 2 + 3?", "answer": "#### 5"}\n')
    base = {
        "output_dir": str(tmp_path / "run"),
        "data": {"stage2": {"path": str(data), "fields": {"instruction": "instruction", "answer": "x"}}},
    }
    del base["data"]["stage2"]["fields"]["answer"]
    with pytest.raises(ConfigError, match="maps no 'reference'"):
        plan_run(
            RunConfig.model_validate({**base, "stage2": {"answer_checker": "word_problems"}}),
            "stage2",
            start_model=str(tiny_model_dir),
        )
    with pytest.raises(ConfigError, match="declares no check_answer"):
        plan_run(
            RunConfig.model_validate({**base, "stage2": {"answer_checker": "alpaca_eval"}}),
            "stage2",
            start_model=str(tiny_model_dir),
        )


def _stage2_config(tmp_path, tiny_model_dir, **extra):
    from pathlib import Path

    from srt.config import apply_overrides

    data = Path(__file__).resolve().parents[1] / "configs" / "data" / "word_problems_stage2.jsonl"
    cfg = apply_overrides(
        {
            "output_dir": str(tmp_path / "run"),
            "model": {"path": str(tiny_model_dir), "dtype": "float32"},
            "data": {
                "stage2": {
                    "path": str(data),
                    "fields": {"id": "id", "instruction": "instruction", "reference": "answer"},
                    "limit": 4,
                }
            },
            "generation": {"batch_size": 4, "response": {"max_new_tokens": 8}},
            "stage2": {"critic": {"name": "reference"}, "answer_checker": "word_problems"},
            "dpo": {"max_steps": 1, "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
            "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
        },
        [f"{k}={v}" for k, v in extra.items()],
    )
    return RunConfig.model_validate(cfg)


@pytest.mark.slow
def test_stage2_report_states_pair_precision(tmp_path, tiny_model_dir):
    import json
    from pathlib import Path

    from srt.pipeline.stage2 import run_stage2

    cfg = _stage2_config(tmp_path, tiny_model_dir)
    run_stage2(cfg, start_model=str(tiny_model_dir))
    rd = Path(cfg.output_dir) / "stage2" / "round1"
    report = json.loads((rd / "report.json").read_text())
    pairs = report["pair_precision"]["pairs"]
    # The reference critic's refinement is the gold solution and the tiny model's answers are noise.
    assert pairs["n"] == report["pairs"] > 0 and pairs["precision"] == 1.0 and pairs["inverted"] == 0
    assert "## Pair precision against gold answers (word_problems" in (rd / "report.md").read_text()

    # Reported only, so not in the round's fingerprint: unsetting it, or setting it again, on a finished round
    # re-trains nothing and brings the report up to date.
    done = (rd / "model" / "srt_done.json").read_bytes()
    run_stage2(
        _stage2_config(tmp_path, tiny_model_dir, **{"stage2.answer_checker": "null"}), start_model=str(tiny_model_dir)
    )
    without = json.loads((rd / "report.json").read_text())
    assert "pair_precision" not in without and without["counters"] == report["counters"]
    assert "Pair precision" not in (rd / "report.md").read_text()
    run_stage2(cfg, start_model=str(tiny_model_dir))
    assert json.loads((rd / "report.json").read_text()) == report
    assert "## Pair precision against gold answers (word_problems" in (rd / "report.md").read_text()
    assert (rd / "model" / "srt_done.json").read_bytes() == done


# -- dpo.pair_format: turn -----------------------------------------------------------------------------


def _turn(instruction, sample, score, refinement_score, refinement="Better: 5."):
    rec = _scored(instruction, sample, score)
    return rec.model_copy(update={"refinement": refinement, "refinement_score": refinement_score})


def test_turn_pairs_pair_the_widest_winner_with_the_worst_loser():
    from srt.critic_template import REFINEMENT_SEPARATOR, render_feedback, render_srt_turn
    from srt.pipeline.stage2 import turn_pairs

    won = [_turn("a", 0, 3, 5), _turn("a", 1, 2, 8, "Best: 5."), _turn("a", 2, 2, 8), _turn("b", 0, 4, 6)]
    lost = [_turn("a", 3, 6, 6, "Same."), _turn("a", 4, 7, 2, "Worse: 9."), _turn("c", 0, 5, 5)]
    rejects = [{"id": x.id, "reason": "refinement_not_better", "kept": x.model_dump(mode="json")} for x in lost]
    rejects.append({"id": "z", "reason": "parse_failure:x"})
    pairs, counts = turn_pairs(won, rejects, 1)
    assert counts == {"instructions_won": 2, "instructions_lost": 2, "turn_pairs": 1}  # b has no loser
    (pair,) = pairs
    assert pair.id == "a-r1-turn" and pair.source_id == "a#s1" and pair.meta["rejected_id"] == "a#s4"
    assert pair.chosen == render_srt_turn("r1", render_feedback("w", "s", 2), "Best: 5.")  # the whole turn
    assert pair.chosen.startswith("r1") and "[[2]]" in pair.chosen and REFINEMENT_SEPARATOR in pair.chosen
    assert pair.rejected.startswith("r4") and "[[7]]" in pair.rejected and pair.rejected.endswith("Worse: 9.")


def test_turn_format_is_validated_early():
    with pytest.raises(ConfigError, match="completion_end: eos"):
        load_config(None, ["dpo.pair_format=turn", "generation.response.num_samples=2"])
    with pytest.raises(ConfigError, match="num_samples >= 2"):
        load_config(None, ["dpo.pair_format=turn", "dpo.completion_end=eos"])
    cfg = load_config(None, ["dpo.pair_format=turn", "dpo.completion_end=eos", "generation.response.num_samples=2"])
    assert cfg.dpo.pair_format == "turn"


def test_turn_pairs_train_on_the_tiny_model(tiny_model, tiny_tokenizer, tmp_path):
    from srt.data import DPODataModule
    from srt.pipeline.stage2 import turn_pairs
    from srt.records import write_jsonl_atomic
    from srt.training.dpo import DPOModule

    won = [_turn(f"i{k}", 0, 2, 8) for k in range(2)]
    lost = [_turn(f"i{k}", 1, 6, 3, "Worse.") for k in range(2)]
    rejects = [{"id": x.id, "reason": "refinement_not_better", "kept": x.model_dump(mode="json")} for x in lost]
    pairs, _ = turn_pairs(won, rejects, 1)
    path = tmp_path / "turn_pairs.jsonl"
    write_jsonl_atomic(path, pairs)
    config = DPOConfig(pair_format="turn", completion_end="eos", micro_batch_size=2, max_length=256)
    dm = DPODataModule(tiny_tokenizer, config, train_files=[path])
    dm.setup()
    (batch,) = list(dm.predict_dataloader())
    for side, turn in (("chosen", pairs[0].chosen), ("rejected", pairs[0].rejected)):
        labels = batch[f"{side}_labels"][0]
        trained = labels[labels != -100].tolist()
        assert trained[-1] == tiny_tokenizer.eos_token_id  # the turn ends the turn
        assert tiny_tokenizer.decode(trained[:-1]).replace(" ", "").startswith(turn.replace(" ", "")[:20])
    batch["ref_chosen_logps"] = torch.tensor([-30.0, -30.0])
    batch["ref_rejected_logps"] = torch.tensor([-30.0, -30.0])
    module = DPOModule(tiny_model, tiny_tokenizer, config=config)
    module.configure_model()
    out = module.compute_batch(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and any(p.grad is not None for p in module.model.parameters())


@pytest.mark.slow
def test_stage2_turn_format_builds_turn_pairs_in_the_round(tmp_path, tiny_model_dir):
    from pathlib import Path

    from srt.pipeline.stage2 import NO_PAIRS_FILE, run_stage2
    from srt.records import PreferencePair, read_jsonl

    cfg = _stage2_config(
        tmp_path,
        tiny_model_dir,
        **{"dpo.pair_format": "turn", "dpo.completion_end": "eos", "generation.response.num_samples": 2},
    )
    # The reference critic's gold refinement always wins: refinement pairs exist, but no turn loses,
    # so there is no turn pair and the round says so instead of training.
    assert run_stage2(cfg, start_model=str(tiny_model_dir)) == Path(tiny_model_dir)
    rd = Path(cfg.output_dir) / "stage2" / "round1"
    assert len(list(read_jsonl(rd / "pairs.jsonl", PreferencePair))) == 8
    assert (rd / "turn_pairs.jsonl").is_file() and not list(read_jsonl(rd / "turn_pairs.jsonl", PreferencePair))
    assert (rd / NO_PAIRS_FILE).is_file()
