"""Batched generation on the tiny Llama, checked against plain unbatched `model.generate`."""

import random

import pytest
import torch

from srt.errors import ConfigError
from srt.generation import GenerationOutput, Generator, SamplingConfig

INSTRUCTIONS = [
    "Hello there",
    "What is the capital of France? Answer in one word, please.",
    "你好",
    "Write a short poem about the sea, the wind, the sky and the stars at night.",
    "2 + 2 = ?",
]


@pytest.fixture()
def generator(tiny_model, tiny_tokenizer):
    return Generator(tiny_model, tiny_tokenizer, batch_size=2)


def reference_tokens(generator, prompt, max_new_tokens):
    """Greedy continuation of one unpadded prompt with plain transformers (no srt code involved)."""
    ids = generator.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = generator.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=generator.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_greedy_batched_equals_unbatched_reference(generator):
    prompts = generator.render_chat(INSTRUCTIONS)
    outputs = generator.generate(prompts, SamplingConfig(max_new_tokens=12))
    assert len({o.text for o in outputs}) == len(prompts)  # the model's output depends on the prompt
    for prompt, out in zip(prompts, outputs):
        expected = reference_tokens(generator, prompt, 12)
        assert out.text == generator.tokenizer.decode(expected, skip_special_tokens=True)
        assert out.num_prompt_tokens == len(generator.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert (out.num_new_tokens, out.finish_reason) == (12, "length")
    again = Generator(generator.model, generator.tokenizer, batch_size=5).generate(
        prompts, SamplingConfig(max_new_tokens=12)
    )
    assert again == outputs


def test_max_new_tokens_is_respected(generator):
    prompts = generator.render_chat(INSTRUCTIONS[:3])
    short = generator.generate(prompts, SamplingConfig(max_new_tokens=3))
    assert all(o.num_new_tokens == 3 and o.finish_reason == "length" for o in short)
    for prompt, out in zip(prompts, short):
        assert out.text == generator.tokenizer.decode(reference_tokens(generator, prompt, 3))


def test_stops_at_eos(generator):
    # Declare a token the greedy model really produces as an extra EOS: generation must stop there.
    prompts = generator.render_chat(INSTRUCTIONS)
    references = [reference_tokens(generator, prompt, 16) for prompt in prompts]
    target = references[1]
    stop_token = target[5]
    first = target.index(stop_token)
    generator.model.generation_config.eos_token_id = [generator.tokenizer.eos_token_id, stop_token]
    outputs = Generator(generator.model, generator.tokenizer, batch_size=3).generate(
        prompts, SamplingConfig(max_new_tokens=16)
    )

    assert outputs[1].finish_reason == "eos"
    assert outputs[1].num_new_tokens == first + 1
    assert outputs[1].text == generator.tokenizer.decode(target[:first])
    for tokens, out in zip(references, outputs):  # rows in the same batch are unaffected unless they hit it too
        if stop_token in tokens:
            assert out.finish_reason == "eos" and out.text == generator.tokenizer.decode(
                tokens[: tokens.index(stop_token)]
            )
        else:
            assert out.finish_reason == "length" and out.text == generator.tokenizer.decode(tokens)


def test_stop_strings_stop_early_and_are_trimmed(generator):
    prompts = generator.render_chat(INSTRUCTIONS)
    target = reference_tokens(generator, prompts[3], 24)
    full_text = generator.tokenizer.decode(target)
    # A clean ASCII token from the middle of the greedy answer serves as the stop string.
    stop = next(
        s
        for s in (generator.tokenizer.decode([t]).strip() for t in target[4:])
        if len(s) >= 2 and s.isascii() and s.isalpha() and full_text.find(s) > 0
    )
    outputs = generator.generate(prompts, SamplingConfig(max_new_tokens=24, stop=[stop]))
    assert outputs[3].finish_reason == "stop"
    assert outputs[3].text == full_text[: full_text.find(stop)]
    assert outputs[3].num_new_tokens < 24
    for out in outputs:
        assert stop not in out.text


def test_seeded_sampling_is_reproducible_and_independent_of_batching(generator):
    prompts = generator.render_chat(INSTRUCTIONS)
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=7)
    base = generator.generate(prompts, sampling)
    assert generator.generate(prompts, sampling) == base
    for batch_size in (1, 3, 8):
        assert (
            Generator(generator.model, generator.tokenizer, batch_size=batch_size).generate(prompts, sampling) == base
        )
    # A resumed run that only does the remaining prompts, in another order, samples the same.
    order = list(range(len(prompts)))
    random.Random(0).shuffle(order)
    tail = generator.generate([prompts[i] for i in order[2:]], sampling)
    assert tail == [base[i] for i in order[2:]]
    # Another seed gives other samples, and sampling differs from greedy.
    other = generator.generate(prompts, SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=10, seed=8))
    assert [o.text for o in other] != [o.text for o in base]
    greedy = generator.generate(prompts, SamplingConfig(max_new_tokens=10))
    assert [o.text for o in greedy] != [o.text for o in base]


def test_repeated_prompts_get_different_samples_and_keys_name_streams(generator):
    [prompt] = generator.render_chat(INSTRUCTIONS[:1])
    sampling = SamplingConfig(temperature=1.5, max_new_tokens=8, seed=1)
    samples = generator.generate([prompt] * 4, sampling)  # best-of-n
    assert len({s.text for s in samples}) > 1
    by_key = generator.generate([prompt, prompt], sampling, keys=["a", "b"])
    assert generator.generate([prompt], sampling, keys=["b"])[0] == by_key[1]


def test_tiny_top_p_or_temperature_is_greedy(generator):
    prompts = generator.render_chat(INSTRUCTIONS)
    greedy = generator.generate(prompts, SamplingConfig(max_new_tokens=8))
    assert generator.generate(prompts, SamplingConfig(temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=3)) == greedy
    assert generator.generate(prompts, SamplingConfig(temperature=1e-4, max_new_tokens=8, seed=3)) == greedy


def test_chat_with_system_prompt_and_assistant_prefix(generator):
    messages = [{"role": "user", "content": "Say hi"}]
    [rendered] = generator.render_chat(
        [messages], assistant_prefixes=["Hi!\n\n### Feedback\n"], system_prompt="Be brief."
    )
    assert rendered == "<s><|system|>\nBe brief.</s>\n<|user|>\nSay hi</s>\n<|assistant|>\nHi!\n\n### Feedback\n"
    sampling = SamplingConfig(max_new_tokens=6)
    [out] = generator.chat(
        [messages], sampling, assistant_prefixes=["Hi!\n\n### Feedback\n"], system_prompt="Be brief."
    )
    assert out == generator.generate([rendered], sampling)[0]
    assert out.text == generator.tokenizer.decode(reference_tokens(generator, rendered, 6))
    with pytest.raises(ConfigError, match="2 assistant_prefixes for 1"):
        generator.chat(["x"], sampling, assistant_prefixes=["a", "b"])


def test_no_pad_token_and_right_padding_tokenizer(generator, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    assert tokenizer.padding_side == "right"
    no_pad = Generator(generator.model, tokenizer, batch_size=4)
    prompts = generator.render_chat(INSTRUCTIONS)
    assert no_pad.pad_token_id == tokenizer.eos_token_id
    assert no_pad.generate(prompts, SamplingConfig(max_new_tokens=8)) == generator.generate(
        prompts, SamplingConfig(max_new_tokens=8)
    )


def test_from_pretrained_and_progress_bar(tiny_model_dir, capsys):
    generator = Generator.from_pretrained(str(tiny_model_dir), dtype="float32", batch_size=2)
    outputs = generator.chat(INSTRUCTIONS[:3], SamplingConfig(max_new_tokens=4), desc="answers")
    assert all(isinstance(o, GenerationOutput) and o.num_new_tokens == 4 for o in outputs)
    err = capsys.readouterr().err
    assert "answers" in err and "tok_per_s" in err
    assert generator.generate([], SamplingConfig()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_sampling_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingConfig(**kwargs)
