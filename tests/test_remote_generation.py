"""RemoteGenerator against the loopback OpenAI-compatible server (tests/chat_server.py) that serves
the tiny Llama: same outputs as in-process greedy generation, concurrency bound, retries, settings."""

from __future__ import annotations

import pytest
from chat_server import ChatServer, Fault

from srt.errors import ConfigError
from srt.generation import Generator, SamplingConfig
from srt.remote_generation import RemoteGenerationError, RemoteGenerator

INSTRUCTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain photosynthesis simply.",
    "Translate: Good morning, how are you?",
    "Write a short poem about the sea and the wind.",
]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=20)


@pytest.fixture()
def server(tiny_model, tiny_tokenizer):
    with ChatServer(model=tiny_model, tokenizer=tiny_tokenizer, max_new_tokens=64) as srv:
        yield srv


def remote(server, tokenizer, **settings) -> RemoteGenerator:
    return RemoteGenerator(tokenizer, {"base_url": server.base_url, "model": "tiny", **settings})


def test_matches_in_process_greedy_generation(server, tiny_model, tiny_tokenizer):
    local = Generator(tiny_model, tiny_tokenizer, batch_size=1)
    gen = remote(server, tiny_tokenizer, max_concurrency=3)

    expected = local.chat(INSTRUCTIONS, GREEDY, system_prompt="Be brief.")
    got = gen.chat(INSTRUCTIONS, GREEDY, system_prompt="Be brief.")
    assert [o.text for o in got] == [o.text for o in expected]
    assert all(o.text for o in got)
    assert [(o.num_prompt_tokens, o.num_new_tokens, o.finish_reason) for o in got] == [
        (o.num_prompt_tokens, o.num_new_tokens, o.finish_reason) for o in expected
    ]

    # Continuing a partly written assistant turn (the self critic): only what follows the prefix.
    prefixes = [f"{text}\n\n### Feedback\n" for text in (o.text for o in expected)]
    expected = local.chat(INSTRUCTIONS, GREEDY, assistant_prefixes=prefixes)
    got = gen.chat(INSTRUCTIONS, GREEDY, assistant_prefixes=prefixes)
    assert [o.text for o in got] == [o.text for o in expected]
    sent = [r.body["prompt"] for r in server.requests[-len(INSTRUCTIONS) :]]
    assert sorted(sent) == sorted(local.render_chat(INSTRUCTIONS, prefixes))

    # Stop strings: cut at the first one, finish_reason "stop" (vLLM's stop_reason names it).
    stop = expected[0].text[4:8]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=20, stop=[stop])
    expected = local.chat(INSTRUCTIONS, sampling, assistant_prefixes=prefixes)
    got = gen.chat(INSTRUCTIONS, sampling, assistant_prefixes=prefixes)
    assert [(o.text, o.finish_reason) for o in got] == [(o.text, o.finish_reason) for o in expected]
    assert got[0].finish_reason == "stop" and stop not in got[0].text


def test_sampling_settings_and_per_prompt_seeds_are_sent(server, tiny_tokenizer):
    gen = remote(server, tiny_tokenizer)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, seed=3, stop=["###"])
    prompts = ["<s>same prompt", "<s>same prompt", "<s>other prompt"]
    gen.generate(prompts, sampling)
    bodies = [r.body for r in server.requests]
    assert {(b["model"], b["temperature"], b["top_p"], b["max_tokens"], tuple(b["stop"])) for b in bodies} == {
        ("tiny", 0.7, 0.9, 5, ("###",))
    }
    seeds = sorted(b["seed"] for b in bodies)
    assert len(set(seeds)) == 3  # repeated prompts get their own random streams
    # A resumed run asks for the same samples: same seeds again; another run seed changes them.
    gen.generate(prompts, sampling)
    assert sorted(r.body["seed"] for r in server.requests[3:]) == seeds
    gen.generate(prompts, SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, seed=4, stop=["###"]))
    assert not {r.body["seed"] for r in server.requests[6:]} & set(seeds)


def test_bos_is_not_doubled_when_the_server_tokenizer_adds_it(server, tiny_tokenizer):
    import copy

    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    remote(server, tokenizer).chat(["hi"], GREEDY)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.startswith("<s>") and server.requests[-1].body["prompt"] == rendered[len("<s>") :]
    remote(server, tiny_tokenizer).chat(["hi"], GREEDY)  # the tiny tokenizer adds none: the template's stays
    assert server.requests[-1].body["prompt"] == rendered


def test_concurrency_is_bounded_and_order_kept(server, tiny_tokenizer):
    server.handle_delay_s = 0.15  # keep requests in flight long enough to overlap
    gen = remote(server, tiny_tokenizer, max_concurrency=2)
    prompts = [f"<s><|user|>\nQuestion {i}</s>\n<|assistant|>\n" for i in range(6)]
    outputs = gen.generate(prompts, SamplingConfig(temperature=0.0, max_new_tokens=4))
    assert server.max_in_flight == 2
    by_prompt = {r.body["prompt"]: r for r in server.requests}
    assert len(by_prompt) == 6 and len(outputs) == 6
    # Outputs come back in input order although requests finish in any order.
    again = remote(server, tiny_tokenizer, max_concurrency=1).generate(
        prompts, SamplingConfig(temperature=0.0, max_new_tokens=4)
    )
    assert [o.text for o in outputs] == [o.text for o in again]


def test_429_and_500_are_retried(server, tiny_tokenizer):
    expected = remote(server, tiny_tokenizer).chat(INSTRUCTIONS[:2], GREEDY)
    server.requests.clear()
    server.inject(Fault.http(429, retry_after="0.05"), Fault.http(500), Fault.drop())
    got = remote(server, tiny_tokenizer, max_concurrency=1, max_retries=3).chat(INSTRUCTIONS[:2], GREEDY)
    assert [o.text for o in got] == [o.text for o in expected]
    assert server.request_count == 2 + 3  # every fault cost one extra request


def test_exhausted_retries_and_refusals_raise_clear_errors(server, tiny_tokenizer):
    server.inject(Fault.http(503), Fault.http(503))
    with pytest.raises(RemoteGenerationError, match=r"HTTP 503.*tiny"):
        remote(server, tiny_tokenizer, max_retries=1).chat(["hi"], GREEDY)
    assert server.request_count == 2
    server.inject(Fault.http(404))  # not retryable (wrong model name / route): fails at once
    with pytest.raises(RemoteGenerationError, match=f"{server.base_url}.*HTTP 404"):
        remote(server, tiny_tokenizer, max_retries=3).chat(["hi"], GREEDY)
    assert server.request_count == 3


def test_from_config_settings_and_api_key(server, tiny_model_dir, monkeypatch):
    gen = RemoteGenerator.from_config({"base_url": server.base_url}, model_path=str(tiny_model_dir))
    assert gen.model_name == str(tiny_model_dir)  # vLLM serves a model under its path by default
    assert gen.chat(["hi"], GREEDY)[0].text
    assert server.requests[-1].authorization == "Bearer EMPTY"

    monkeypatch.setenv("SRT_TEST_KEY", "sk-test-123")
    gen = RemoteGenerator.from_config({"base_url": server.base_url, "api_key_env": "SRT_TEST_KEY"}, str(tiny_model_dir))
    gen.chat(["hi"], GREEDY)
    assert server.requests[-1].authorization == "Bearer sk-test-123"
    assert "sk-test-123" not in repr(gen.settings)

    with pytest.raises(ConfigError, match="MISSING_KEY_VAR"):
        RemoteGenerator.from_config(
            {"base_url": server.base_url, "api_key_env": "MISSING_KEY_VAR"}, str(tiny_model_dir)
        )
    with pytest.raises(ConfigError, match="generation.server.concurrency"):
        RemoteGenerator.from_config({"base_url": server.base_url, "concurrency": 4}, str(tiny_model_dir))
    with pytest.raises(ConfigError, match="generation.server.base_url"):
        RemoteGenerator.from_config({}, str(tiny_model_dir))


def test_pipeline_swaps_in_the_remote_backend(server, tiny_model_dir, tmp_path):
    """``generation.backend: openai`` in a run config: the stage-1 responses equal the in-process ones."""
    from srt.config import RunConfig
    from srt.pipeline.feedback import generate_responses
    from srt.pipeline.stage1 import build_generator
    from srt.records import InstructionRecord

    instructions = [InstructionRecord(id=f"i{k}", instruction=text) for k, text in enumerate(INSTRUCTIONS)]
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
    responses = {}
    for backend in ("hf", "openai"):
        cfg = RunConfig(generation={"backend": backend, "server": {"base_url": server.base_url, "max_concurrency": 2}})
        generator = build_generator(cfg, str(tiny_model_dir))
        assert isinstance(generator, RemoteGenerator) == (backend == "openai")
        records = generate_responses(
            generator, instructions, tmp_path / f"{backend}.jsonl", sampling_kwargs=sampling, seed=0, stage=1
        )
        responses[backend] = [(r.response, r.meta["response_finish"]) for r in records]
    assert responses["openai"] == responses["hf"]
    assert server.request_count == len(INSTRUCTIONS)
