"""srt.decode (the Generator's decode loop) against plain `model.generate` on the tiny Llama."""

import random

import pytest
import torch

import srt.decode
from srt.decode import DecodeStats, decode, row_floor, unsupported
from srt.generation import Generator, SamplingConfig

SYSTEM = "You are a careful assistant. Answer briefly and check your arithmetic twice."
INSTRUCTIONS = [
    "Hello there",
    "What is the capital of France? Answer in one word, please.",
    "你好",
    "Write a short poem about the sea, the wind, the sky and the stars at night.",
    "2 + 2 = ?",
    "Count from one to ten, then back again, slowly.",
    "Why?",
]


@pytest.fixture()
def prompts(tiny_tokenizer):
    gen = Generator.__new__(Generator)
    gen.tokenizer = tiny_tokenizer
    return gen.render_chat(INSTRUCTIONS, system_prompt=SYSTEM)


def encode(tokenizer, texts):
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def generate_batch(model, tokenizer, batch, max_new_tokens, eos):
    """Plain `model.generate` on one left-padded batch: the new tokens of each row, up to its end."""
    width = max(len(ids) for ids in batch)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    rows = []
    for seq in out[:, width:].tolist():
        end = next((k + 1 for k, t in enumerate(seq) if t in eos), len(seq))
        rows.append(seq[:end])
    return rows


def greedy_decode(model, tokenizer, batch, max_new_tokens, eos, **kwargs):
    stats = kwargs.pop("stats", DecodeStats())
    tokens = decode(
        model,
        batch,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos,
        pad_token_id=tokenizer.pad_token_id,
        pick=lambda logits, rows: logits.argmax(-1),
        stats=stats,
        **kwargs,
    )
    return tokens, stats


def shared_length(batch):
    n = 0
    while n < min(map(len, batch)) - 1 and len({p[n] for p in batch}) == 1:
        n += 1
    return n


def common_eos(model, tokenizer, batch, max_new_tokens):
    """An extra EOS id: a token that the greedy answers produce, so rows end at different steps."""
    reference = generate_batch(model, tokenizer, batch, max_new_tokens, [tokenizer.eos_token_id])
    counts: dict[int, int] = {}
    for row in reference:
        for t in set(row[1:]):
            counts[t] = counts.get(t, 0) + 1
    token = max(counts, key=lambda t: (0 < counts[t] < len(batch), counts[t]))
    return [tokenizer.eos_token_id, token]


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_greedy_equals_generate_for_prompts_of_different_lengths(tiny_model, tiny_tokenizer, prompts, shared_prefix):
    batch = encode(tiny_tokenizer, prompts)
    assert len({len(p) for p in batch}) > 3
    eos = common_eos(tiny_model, tiny_tokenizer, batch, 20)
    expected = generate_batch(tiny_model, tiny_tokenizer, batch, 20, eos)
    assert len({len(row) for row in expected}) > 1  # rows end at different steps: compaction runs
    tokens, stats = greedy_decode(
        tiny_model, tiny_tokenizer, batch, 20, eos, batch_size=len(batch), shared_prefix=shared_prefix
    )
    assert tokens == expected
    assert stats.refills == 0 and stats.compactions > 0
    # The system prompt is a prefix shared by every prompt: prefilled once, not once per row.
    shared = shared_length(batch)
    assert shared > 15
    padded = len(batch) * max(len(p) for p in batch)
    if shared_prefix:
        assert stats.prefill_positions <= padded - (len(batch) - 1) * shared
    else:
        assert stats.prefill_positions == padded


def test_more_prompts_than_batch_size_refill(tiny_model, tiny_tokenizer, prompts, monkeypatch):
    monkeypatch.setattr(srt.decode, "TRIM_COLUMNS", 1)  # trim as soon as a padding column is free
    batch = encode(tiny_tokenizer, prompts) * 2
    eos = common_eos(tiny_model, tiny_tokenizer, batch, 16)
    trims = 0
    # Shortest first: refilled prompts are longer than the batch's columns (the cache grows on the
    # left). Longest first (the Generator's order): refilled rows bring padding that is trimmed
    # once the long rows are done.
    for descending in (False, True):
        batch.sort(key=len, reverse=descending)
        expected = [generate_batch(tiny_model, tiny_tokenizer, [p], 16, eos)[0] for p in batch]
        for batch_size in (1, 3, 4):
            for shared_prefix in (True, False):
                tokens, stats = greedy_decode(
                    tiny_model, tiny_tokenizer, batch, 16, eos, batch_size=batch_size, shared_prefix=shared_prefix
                )
                assert tokens == expected, (descending, batch_size, shared_prefix)
                assert stats.prompts == len(batch)
                assert (stats.refills > 0) == (batch_size > 1)
                assert stats.prefill_calls == len(batch) if batch_size == 1 else stats.prefill_calls < len(batch)
                trims += stats.trims
    assert trims > 0


def test_generator_ends_rows_where_generate_does(tiny_model, tiny_tokenizer, prompts):
    sampling_eos = SamplingConfig(max_new_tokens=20)
    batch = encode(tiny_tokenizer, prompts)
    tiny_model.generation_config.eos_token_id = common_eos(tiny_model, tiny_tokenizer, batch, 20)
    fast = Generator(tiny_model, tiny_tokenizer, batch_size=4)
    plain = Generator(tiny_model, tiny_tokenizer, batch_size=4, decode_loop=False)

    outputs = fast.generate(prompts, sampling_eos)
    assert outputs == plain.generate(prompts, sampling_eos)
    assert {o.finish_reason for o in outputs} == {"eos", "length"}
    assert fast.stats.prompts == len(prompts) and plain.stats.prompts == 0

    short = SamplingConfig(max_new_tokens=3)
    assert fast.generate(prompts, short) == plain.generate(prompts, short)

    # A stop string: a piece of text in the middle of one greedy answer.
    text = outputs[3].text
    stop = next(
        s for s in (tiny_tokenizer.decode([t]) for t in encode(tiny_tokenizer, [text])[0][3:]) if len(s.strip()) >= 2
    )
    sampling_stop = SamplingConfig(max_new_tokens=20, stop=[stop])
    stopped = fast.generate(prompts, sampling_stop)
    assert stopped == plain.generate(prompts, sampling_stop)
    assert "stop" in {o.finish_reason for o in stopped}
    assert all(stop not in o.text for o in stopped)


def test_sampling_is_independent_of_batch_size_and_composition(tiny_model, tiny_tokenizer, prompts):
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5)
    base = Generator(tiny_model, tiny_tokenizer, batch_size=len(prompts)).generate(prompts, sampling)
    assert len({o.text for o in base}) == len(prompts)
    for batch_size in (1, 2, 3):
        assert Generator(tiny_model, tiny_tokenizer, batch_size=batch_size).generate(prompts, sampling) == base
    order = list(range(len(prompts)))
    random.Random(1).shuffle(order)
    subset = order[:4]
    again = Generator(tiny_model, tiny_tokenizer, batch_size=2).generate([prompts[i] for i in subset], sampling)
    assert again == [base[i] for i in subset]
    # ... and the same samples as the generate() fallback.
    plain = Generator(tiny_model, tiny_tokenizer, batch_size=3, decode_loop=False)
    assert plain.generate(prompts, sampling) == base
    other = Generator(tiny_model, tiny_tokenizer, batch_size=3).generate(
        prompts, SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=6)
    )
    assert [o.text for o in other] != [o.text for o in base]


def test_unsupported_generation_config_falls_back_to_generate(tiny_model, tiny_tokenizer, prompts):
    sampling = SamplingConfig(max_new_tokens=12)
    assert unsupported(tiny_model) is None
    before = Generator(tiny_model, tiny_tokenizer, batch_size=4).generate(prompts, sampling)

    tiny_model.generation_config.repetition_penalty = 3.0
    assert "repetition_penalty" in unsupported(tiny_model)
    fast = Generator(tiny_model, tiny_tokenizer, batch_size=4)
    outputs = fast.generate(prompts, sampling)
    assert fast.stats.prompts == 0  # nothing went through srt.decode
    assert outputs == Generator(tiny_model, tiny_tokenizer, batch_size=4, decode_loop=False).generate(prompts, sampling)
    assert outputs != before  # the penalty acted

    tiny_model.generation_config.repetition_penalty = 1.0  # the neutral value is fine
    assert unsupported(tiny_model) is None


def test_decode_stats_add_up(tiny_model, tiny_tokenizer, prompts):
    tiny_model.generation_config.eos_token_id = common_eos(
        tiny_model, tiny_tokenizer, encode(tiny_tokenizer, prompts), 16
    )
    generator = Generator(tiny_model, tiny_tokenizer, batch_size=3)
    outputs = generator.generate(prompts, SamplingConfig(max_new_tokens=16))
    s = generator.stats
    batch = encode(tiny_tokenizer, prompts)
    assert s.prompts == len(prompts)
    assert s.new_tokens == sum(o.num_new_tokens for o in outputs)
    # Every prefill gives each of its prompts its first token; every other token is a decode row-step.
    assert s.new_tokens == len(prompts) + s.token_row_steps
    assert s.token_row_steps <= s.row_steps <= s.decode_steps * 3
    assert s.prefill_tokens == sum(len(p) for p in batch)
    # The shared prefix is computed once; refills reuse it.
    assert s.prefill_tokens - (len(prompts) - 1) * shared_length(batch) <= s.prefill_positions < s.prefill_tokens
    assert s.prefill_calls == 1 + s.refills and s.refills > 0
    assert s.decode_s > 0 and s.prefill_s > 0
    # Summed over calls.
    generator.generate(prompts[:2], SamplingConfig(max_new_tokens=4))
    assert generator.stats.prompts == len(prompts) + 2


def test_row_floor_keeps_filler_rows(tiny_model, tiny_tokenizer, prompts, monkeypatch):
    floor = row_floor(tiny_model)
    assert 1 <= floor
    batch = encode(tiny_tokenizer, prompts)
    eos = common_eos(tiny_model, tiny_tokenizer, batch, 20)
    expected = generate_batch(tiny_model, tiny_tokenizer, batch, 20, eos)
    monkeypatch.setattr(srt.decode, "row_floor", lambda model: 5)
    tokens, stats = greedy_decode(tiny_model, tiny_tokenizer, batch, 20, eos, batch_size=len(batch))
    assert tokens == expected
    lengths = sorted(len(row) for row in expected)
    # Decode steps for the longest row; at least 5 rows are computed at each of them.
    assert stats.decode_steps == lengths[-1] - 1
    assert stats.row_steps >= 5 * stats.decode_steps
    assert stats.row_steps - stats.token_row_steps > 0  # some of them filler


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_cli_sets_a_passive_openmp_wait_policy_unless_given(given):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import sys, os, srt.cli.train; assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (given or "PASSIVE")


def test_peft_wrapped_model_runs_the_loop_like_generate(tiny_model, tiny_tokenizer, prompts):
    import peft

    model = peft.get_peft_model(tiny_model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.nn.init.normal_(model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    assert srt.decode._forward_kwargs(model) == {"logits_to_keep": 1}  # prefill projects one position only
    sampling = SamplingConfig(max_new_tokens=10)
    fast = Generator(model, tiny_tokenizer, batch_size=3)
    outputs = fast.generate(prompts, sampling)
    assert fast.stats.prompts == len(prompts)
    assert outputs == Generator(model, tiny_tokenizer, batch_size=3, decode_loop=False).generate(prompts, sampling)
