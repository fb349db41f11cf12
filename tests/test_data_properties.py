"""Property tests of the loss masks: random texts (CJK, emoji, combining marks, RTL, control
whitespace) through the real tiny tokenizer and chat template."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srt.config import DPOConfig, SFTConfig
from srt.data import (
    IGNORE_INDEX,
    DataStats,
    DPODataset,
    LengthGroupedSampler,
    SFTCollator,
    SFTDataset,
    build_dpo_examples,
    build_sft_examples,
)
from srt.records import Feedback, FeedbackRecord, PreferencePair

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SPECIAL = ("<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")
_pieces = st.one_of(
    st.characters(codec="utf-8"),  # any code point (no surrogates)
    # Multi-code-point graphemes too: skin-tone emoji, combining accents, ZWJ sequences.
    st.sampled_from(
        list("abc xyz\n\t.,!?#[]:-")
        + ["你", "好", "世界", "😀", "🚀", "👍🏽", "e\u0301", "\u0303", "👩\u200d💻", "مرحبا", "ж", "ß", "\r\n"]
    ),
)
# Data text may spell special tokens ("</s>"): they must stay plain text. The user text goes
# through the chat template, which cannot tell them apart, so it is kept free of them.
_special_strings = st.sampled_from(SPECIAL)
text = st.lists(st.one_of(_pieces, _special_strings), min_size=1, max_size=30).map("".join).filter(str.strip)
user_text = (
    st.lists(_pieces, min_size=1, max_size=30)
    .map("".join)
    .filter(lambda t: t.strip() and not any(s in t for s in SPECIAL))
)


def tiny_prompt(instruction: str, system: str | None = None) -> str:
    sys_turn = f"<|system|>\n{system}</s>\n" if system else ""
    return f"<s>{sys_turn}<|user|>\n{instruction}</s>\n<|assistant|>\n"


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def n_tokens(tok, s: str, data_text: bool = False) -> int:
    return len(tok(s, add_special_tokens=False, split_special_tokens=data_text)["input_ids"])


def expected_assistant(resp, w, s, score, ref, ablation) -> str:
    """The trained text, written out from the documented format (not from srt.data)."""
    if ablation == "refinement_only":
        return ref + "</s>"
    parts = []
    if ablation != "no_weaknesses":
        parts.append(f"Weaknesses:\n{w}")
    if ablation != "no_suggestions":
        parts.append(f"Suggestions:\n{s}")
    if ablation != "no_score":
        parts.append(f"Overall Score: [[{score}]]")
    feedback = "" if ablation == "no_feedback" else "\n\n### Feedback\n" + "\n\n".join(parts)
    return resp + feedback + "\n\n### Improved Response\n" + ref + "</s>"


@SETTINGS
@given(
    instruction=user_text,
    response=text,
    weaknesses=text,
    suggestions=text,
    refinement=text,
    score=st.integers(1, 10),
    system=st.one_of(st.none(), user_text),
    mask_response=st.booleans(),
    ablation=st.sampled_from([None, "no_weaknesses", "no_suggestions", "no_score", "no_feedback", "refinement_only"]),
)
def test_sft_mask_is_exactly_the_intended_spans(
    tiny_tokenizer, instruction, response, weaknesses, suggestions, refinement, score, system, mask_response, ablation
):
    tok = tiny_tokenizer
    rec = FeedbackRecord(
        id="x",
        instruction=instruction,
        response=response,
        refinement=refinement,
        stage=1,
        feedback=Feedback(weaknesses=weaknesses, suggestions=suggestions, score=score, raw=""),
    )
    cfg = SFTConfig(max_length=100_000, mask_response=mask_response, ablation=ablation)
    (item,) = SFTDataset(build_sft_examples(tok, [rec], cfg, system_prompt=system))
    ids, labels = item["input_ids"], item["labels"]

    assistant = expected_assistant(response, weaknesses, suggestions, score, refinement, ablation)
    prompt = tiny_prompt(instruction, system)
    masked_response = mask_response and ablation != "refinement_only"
    if masked_response:
        assert assistant.startswith(response)
        prompt, assistant = prompt + response, assistant[len(response) :]
    assert decode(tok, ids[labels == IGNORE_INDEX]) == prompt
    assert decode(tok, ids[labels != IGNORE_INDEX]) == assistant
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    # The mask is one masked prefix (the prompt tokens, tokenized on their own), then one trained run.
    k = n_tokens(tok, tiny_prompt(instruction, system)) + (
        n_tokens(tok, response, data_text=True) if masked_response else 0
    )
    assert (labels[:k] == IGNORE_INDEX).all() and (labels[k:] != IGNORE_INDEX).all()
    assert labels[-1] == tok.eos_token_id
    assert (ids == tok.bos_token_id).sum() == 1 and ids[0] == tok.bos_token_id
    # Special-token strings in the data stay text: EOS ids only end the user turn and the sequence.
    assert (ids == tok.eos_token_id).sum() == 2 + (system is not None)


# What each completion_end trains after a completion (srt.config.DPOConfig), written out here.
COMPLETION_ENDS = {"eos": "</s>", "feedback": "\n\n### Feedback\n", "none": ""}


@SETTINGS
@given(prompt=user_text, chosen=text, rejected=text, completion_end=st.sampled_from(sorted(COMPLETION_ENDS)))
def test_dpo_mask_is_exactly_the_completion(tiny_tokenizer, prompt, chosen, rejected, completion_end):
    tok = tiny_tokenizer
    pair = PreferencePair(id="p", prompt=prompt, chosen=chosen, rejected=rejected)
    stats = DataStats()
    config = DPOConfig(max_length=100_000, completion_end=completion_end)
    examples = build_dpo_examples(tok, [pair], config, stats=stats)
    if chosen == rejected:
        assert examples == [] and stats.rejected == 1
        return
    (item,) = DPODataset(examples)
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
        assert decode(tok, ids[labels == IGNORE_INDEX]) == tiny_prompt(prompt)
        assert decode(tok, ids[labels != IGNORE_INDEX]) == completion + COMPLETION_ENDS[completion_end]
        k = n_tokens(tok, tiny_prompt(prompt))
        assert (labels[:k] == IGNORE_INDEX).all() and (labels[k:] != IGNORE_INDEX).all()
        assert (ids == tok.bos_token_id).sum() == 1
        # Special-token strings in the data stay text: EOS ends the user turn, and the completion with "eos".
        assert (ids == tok.eos_token_id).sum() == 1 + (completion_end == "eos")
        assert (labels[-1] == tok.eos_token_id) == (completion_end == "eos")


@SETTINGS
@given(texts=st.lists(st.tuples(user_text, text, text), min_size=1, max_size=5))
def test_collated_rows_equal_items_and_pads_carry_no_loss(tiny_tokenizer, texts):
    tok = tiny_tokenizer
    recs = [
        FeedbackRecord(
            id=str(i),
            instruction=a,
            response=b,
            refinement=c,
            stage=1,
            feedback=Feedback(weaknesses="w", suggestions="s", score=5, raw=""),
        )
        for i, (a, b, c) in enumerate(texts)
    ]
    dataset = SFTDataset(build_sft_examples(tok, recs, SFTConfig(max_length=100_000)))
    items = [dataset[i] for i in range(len(dataset))]
    batch = SFTCollator(tok.pad_token_id)(items)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], item["input_ids"])
        assert torch.equal(batch["labels"][row, :n], item["labels"])
        assert (batch["attention_mask"][row, :n] == 1).all() and (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()


@SETTINGS
@given(
    texts=st.lists(st.tuples(user_text, text, text), min_size=1, max_size=6),
    max_length=st.integers(16, 80),
    truncation=st.sampled_from(["drop", "truncate_right", "truncate_left_response"]),
)
def test_truncation_is_bounded_and_counted(tiny_tokenizer, texts, max_length, truncation):
    tok = tiny_tokenizer
    recs = [
        FeedbackRecord(
            id=str(i),
            instruction=a,
            response=b,
            refinement=c,
            stage=1,
            feedback=Feedback(weaknesses="w", suggestions="s", score=5, raw=""),
        )
        for i, (a, b, c) in enumerate(texts)
    ]
    full = build_sft_examples(tok, recs, SFTConfig(max_length=100_000))
    stats = DataStats()
    out = build_sft_examples(tok, recs, SFTConfig(max_length=max_length, truncation=truncation), stats=stats)
    too_long = sum(len(ex["input_ids"]) > max_length for ex in full)
    assert stats.examples == len(out) == len(full) - stats.dropped_too_long
    assert stats.truncated + stats.dropped_too_long == too_long
    if truncation == "drop":
        assert stats.truncated == 0
    by_id = {ex["id"]: ex for ex in full}
    for ex in out:
        assert len(ex["input_ids"]) <= max_length and ex["train_mask"].any()
        whole = by_id[ex["id"]]
        if len(whole["input_ids"]) <= max_length:
            assert torch.equal(ex["input_ids"], whole["input_ids"])
        elif truncation == "truncate_right":
            assert torch.equal(ex["input_ids"], whole["input_ids"][:max_length])
        else:  # truncate_left_response: the intact prompt, then the whole sequence's tail
            p = int(whole["train_mask"].nonzero()[0])  # first response token
            cut = len(whole["input_ids"]) - max_length
            assert len(ex["input_ids"]) == max_length
            assert torch.equal(ex["input_ids"], torch.cat([whole["input_ids"][:p], whole["input_ids"][p + cut :]]))
            assert ex["input_ids"][-1] == tok.eos_token_id


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=120),
    batch_size=st.integers(1, 8),
    world=st.integers(1, 4),
    mult=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    epoch=st.integers(0, 3),
)
def test_sampler_partitions_every_epoch(lengths, batch_size, world, mult, seed, epoch):
    shards = []
    for rank in range(world):
        s = LengthGroupedSampler(lengths, batch_size, num_replicas=world, rank=rank, seed=seed, mega_batch_mult=mult)
        s.set_epoch(epoch)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
        s.set_epoch(epoch)
        assert list(s) == shards[-1]  # deterministic
    n = len(lengths)
    assert len({len(x) for x in shards}) == 1  # equal steps on every rank
    flat = [i for x in shards for i in x]
    assert set(flat) == set(range(n))
    assert len(flat) == n + (-n) % world  # only DistributedSampler-style padding repeats indices
    if world == 1:
        assert sorted(flat) == list(range(n))
