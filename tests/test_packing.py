"""Packed (padding-free) batches: no attention across examples, same losses/log-probs as unpacked."""

from __future__ import annotations

import random

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from oracles import full_logits_sequence_logps

from srt.config import DPOConfig, OptimConfig, SFTConfig
from srt.data import IGNORE_INDEX, DPODataModule, SFTDataModule, pack_by_length
from srt.errors import ConfigError
from srt.records import Feedback, FeedbackRecord
from srt.training.dpo import DPOModule
from srt.training.dpo_objective import concatenated_forward
from srt.training.reference import compute_reference_logps
from srt.training.sft import SFTModule

WORDS = "the quick brown fox jumps over a lazy dog while Paris is the capital of France and 72 clips".split()


def records(n: int, seed: int = 0) -> list[FeedbackRecord]:
    """SFT records of varied lengths (so rows hold several examples of different sizes)."""
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        FeedbackRecord(
            id=f"r{i}",
            instruction=text(rng.randint(2, 12)),
            response=text(rng.randint(1, 15)),
            feedback=Feedback(weaknesses=text(3), suggestions=text(4), score=rng.randint(1, 10), raw="raw"),
            refinement=text(rng.randint(2, 20)),
            stage=1,
        )
        for i in range(n)
    ]


def pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [
        {
            "id": f"p{i}",
            "prompt": text(rng.randint(2, 10)),
            "chosen": text(rng.randint(3, 20)),
            "rejected": text(rng.randint(1, 12)),
        }
        for i in range(n)
    ]


def test_pack_by_length_is_a_valid_best_fit_packing():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 60))]
        rows = pack_by_length(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # each example once
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        # never worse than the trivial bound by more than best-fit-decreasing's guarantee (11/9 OPT + 1)
        assert len(rows) <= 11 / 9 * (sum(lengths) / 64 + 1) + 1
    assert pack_by_length([30, 30, 4, 34], 64) == [[3, 0], [1, 2]]  # 34+30 fills a row exactly, best fit
    with pytest.raises(ConfigError, match="does not fit"):
        pack_by_length([65], 64)


def sft_modules(tokenizer):
    settings = dict(micro_batch_size=3, max_length=128, group_by_length=False)
    packed = SFTDataModule(
        tokenizer, SFTConfig(packing=True, **settings), train_records=records(12), packing_length=200
    )
    plain = SFTDataModule(tokenizer, SFTConfig(**settings), train_records=records(12))
    packed.setup()
    plain.setup()
    return packed, plain


def test_packed_sft_rows_layout(tiny_tokenizer):
    packed, plain = sft_modules(tiny_tokenizer)
    dataset = packed.datasets["train"]
    assert len(dataset) < len(plain.datasets["train"])  # several examples per row
    assert all(len(dataset[r]["input_ids"]) <= 200 for r in range(len(dataset)))
    row = dataset[0]
    by_id = {plain.datasets["train"][k]["id"]: plain.datasets["train"][k] for k in range(len(plain.datasets["train"]))}
    start = 0
    for example_id in row["ids"]:
        alone = by_id[example_id]
        n = len(alone["input_ids"])
        assert torch.equal(row["input_ids"][start : start + n], alone["input_ids"])
        assert torch.equal(row["position_ids"][start : start + n], torch.arange(n))
        assert row["labels"][start] == IGNORE_INDEX  # never predicted from the previous example
        assert torch.equal(row["labels"][start + 1 : start + n], alone["labels"][1:])
        start += n
    assert start == len(row["input_ids"])

    loaded = next(iter(packed.train_dataloader()))
    assert loaded["input_ids"].shape[0] == 3  # batch_size counts packed rows
    assert "attention_mask" not in loaded  # with a mask, transformers would not separate the examples
    rows = [dataset[r] for r in range(3)]
    batch = packed.collator(rows)
    assert int(batch["num_tokens"]) == sum(len(r["input_ids"]) for r in rows)
    assert int(batch["num_trained_tokens"]) == sum(int((r["labels"] != IGNORE_INDEX).sum()) for r in rows)
    for b, r in enumerate(rows):  # right padding: pad id, label -100, a position run of its own
        n, width = len(r["input_ids"]), batch["input_ids"].shape[1]
        assert (batch["labels"][b, n:] == IGNORE_INDEX).all()
        assert torch.equal(batch["position_ids"][b, n:], torch.arange(width - n))


@torch.no_grad()
def test_packed_logits_equal_each_example_alone(tiny_model, tiny_tokenizer):
    """No attention across examples: every example's logits inside a packed (and padded) batch equal
    its logits when run alone, for sdpa and eager attention."""
    packed, plain = sft_modules(tiny_tokenizer)
    by_id = {item["id"]: item for item in plain.datasets["train"]}
    rows = [
        packed.datasets["train"][r] for r in (0, len(packed.datasets["train"]) - 1)
    ]  # longest and shortest: padding
    batch = packed.collator(rows)
    for implementation in ("sdpa", "eager"):
        tiny_model.set_attn_implementation(implementation)
        logits = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        checked = 0
        for b, row in enumerate(rows):
            start = 0
            for example_id in row["ids"]:
                alone = by_id[example_id]["input_ids"]
                expected = tiny_model(input_ids=alone[None], use_cache=False).logits[0]
                torch.testing.assert_close(logits[b, start : start + len(alone)], expected, atol=1e-5, rtol=0)
                start += len(alone)
                checked += 1
        assert checked > batch["input_ids"].shape[0]  # at least one row held several examples
        # Without restarting positions the examples would see each other: the check above can fail.
        leaky = tiny_model(input_ids=batch["input_ids"], use_cache=False).logits
        assert not torch.allclose(leaky, logits, atol=1e-3)


@torch.no_grad()
def test_packed_sft_loss_is_the_token_weighted_unpacked_loss(tiny_model, tiny_tokenizer):
    packed, plain = sft_modules(tiny_tokenizer)
    module = SFTModule(tiny_model, tiny_tokenizer)
    module.configure_model()
    rows = [packed.datasets["train"][r] for r in range(len(packed.datasets["train"]))]
    loss, num_tokens = module.masked_lm_loss(packed.collator(rows))

    examples = {item["id"]: item for item in plain.datasets["train"]}
    assert sorted(i for row in rows for i in row["ids"]) == sorted(examples)
    loss_sum, tokens = 0.0, 0
    for example_id in examples:
        item = examples[example_id]
        logits = tiny_model(input_ids=item["input_ids"][None]).logits[0]
        loss_sum += F.cross_entropy(logits[:-1], item["labels"][1:], ignore_index=IGNORE_INDEX, reduction="sum")
        tokens += int((item["labels"][1:] != IGNORE_INDEX).sum())
    assert int(num_tokens) == tokens
    torch.testing.assert_close(loss, loss_sum / tokens, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_packed_rows_flattened_for_flash_attention_score_the_same(tiny_model, tiny_tokenizer, monkeypatch):
    """flash-attention separates packed sequences only within one row, so scored_logits feeds it the
    rows as a single row; on CPU (sdpa) check that this flattening scores the same tokens identically."""
    import srt.training.policy as policy

    packed, _ = sft_modules(tiny_tokenizer)
    batch = packed.collator([packed.datasets["train"][r] for r in range(3)])
    args = (tiny_model, batch["input_ids"], batch["labels"], None, batch["position_ids"])
    logits, labels, scored = policy.scored_logits(*args)
    monkeypatch.setattr(policy, "_flash_attention", lambda model: True)
    flat_logits, flat_labels, flat_scored = policy.scored_logits(*args)
    assert torch.equal(labels, flat_labels) and torch.equal(scored, flat_scored)
    torch.testing.assert_close(flat_logits, logits, atol=1e-5, rtol=0)


def dpo_modules(tokenizer, data, batch_size=4):
    settings = dict(micro_batch_size=batch_size, max_length=64, group_by_length=False)
    packed = DPODataModule(tokenizer, DPOConfig(packing=True, **settings), train_records=data)
    plain = DPODataModule(tokenizer, DPOConfig(**settings), train_records=data)
    packed.setup()
    plain.setup()
    return packed, plain


@torch.no_grad()
def test_packed_dpo_logps_equal_unpacked(tiny_model, tiny_tokenizer):
    packed, plain = dpo_modules(tiny_tokenizer, pairs(10))
    packed_batches = list(packed.predict_dataloader())
    assert sum(b["input_ids"].shape[0] for b in packed_batches) < 2 * 10  # fewer rows than sequences
    batch = packed_batches[0]
    assert set(batch["sequence_ids"].unique().tolist()) - {-1} == set(range(8))  # 4 pairs: chosen 0-3, rejected 4-7
    packed_logps = compute_reference_logps(tiny_model, packed_batches)
    plain_logps = compute_reference_logps(tiny_model, plain.predict_dataloader())
    assert packed_logps.keys() == plain_logps.keys()
    for pair_id, (chosen, rejected) in plain_logps.items():
        assert packed_logps[pair_id][0] == pytest.approx(chosen, abs=1e-4)
        assert packed_logps[pair_id][1] == pytest.approx(rejected, abs=1e-4)
    # ... and both equal the textbook computation on full logits (the oracle in tests/oracles.py)
    plain_batch = next(iter(plain.predict_dataloader()))
    ours = concatenated_forward(tiny_model, plain_batch)
    for side in ("chosen", "rejected"):
        logits = tiny_model(
            input_ids=plain_batch[f"{side}_input_ids"], attention_mask=plain_batch[f"{side}_attention_mask"]
        ).logits
        expected, tokens = full_logits_sequence_logps(logits, plain_batch[f"{side}_labels"])
        torch.testing.assert_close(ours[f"{side}_logps"], expected, atol=1e-4, rtol=1e-6)
        assert torch.equal(ours[f"{side}_tokens"], tokens)
    # token counts match too
    for packed_batch, plain_batch in zip(packed_batches, plain.predict_dataloader()):
        a, b = concatenated_forward(tiny_model, packed_batch), concatenated_forward(tiny_model, plain_batch)
        assert torch.equal(a["chosen_tokens"], b["chosen_tokens"]) and torch.equal(
            a["rejected_tokens"], b["rejected_tokens"]
        )
        torch.testing.assert_close(a["chosen_logps"], b["chosen_logps"], atol=1e-4, rtol=1e-6)


def test_packed_training_runs_for_sft_and_dpo(tiny_model_dir, tiny_tokenizer):
    """Lightning fit on packed batches: SFT logs token throughput, DPO passes the step-0 reference check
    with log-probs precomputed from packed batches, and both losses move."""
    trainer_kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    packed, _ = sft_modules(tiny_tokenizer)
    sft = SFTModule(str(tiny_model_dir), tiny_tokenizer, config=SFTConfig(optim=OptimConfig(lr=1e-2)))
    trainer = L.Trainer(**trainer_kwargs)
    trainer.fit(sft, datamodule=packed)
    assert trainer.global_step == 3
    assert trainer.callback_metrics["train/tokens_per_s"] > 0

    dpo_dm, _ = dpo_modules(tiny_tokenizer, pairs(8))
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    dpo_dm.set_reference_logps(compute_reference_logps(start, dpo_dm.predict_dataloader()))
    dpo = DPOModule(
        start, tiny_tokenizer, config=DPOConfig(reference="precomputed", beta=0.5, optim=OptimConfig(lr=1e-2))
    )
    trainer = L.Trainer(**trainer_kwargs)
    trainer.fit(dpo, datamodule=dpo_dm)
    assert dpo._reference_checked and trainer.global_step == 3
    assert trainer.callback_metrics["rewards/margins"] != 0


def test_packing_options_are_checked(tiny_tokenizer):
    with pytest.raises(ConfigError, match="packing_length"):
        SFTDataModule(tiny_tokenizer, SFTConfig(max_length=96), train_records=records(2), packing_length=200)
    with pytest.raises(ConfigError, match="packing_length"):
        SFTDataModule(
            tiny_tokenizer, SFTConfig(max_length=96, packing=True), train_records=records(2), packing_length=64
        )
    with pytest.raises(ConfigError, match="packing_length"):
        DPODataModule(tiny_tokenizer, DPOConfig(max_length=96, packing=True), train_records=pairs(2), packing_length=64)
