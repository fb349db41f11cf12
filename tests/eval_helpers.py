"""Helpers for the evaluation tests: a tiny model that really writes the SRT format.

The untrained tiny Llama writes garbage, which exercises the fallback paths. To exercise the
happy path with real generation (no mocks), :func:`train_srt_model` fits the tiny model on SRT
examples (instruction -> response -> feedback -> refinement, in one assistant turn) until greedy
decoding reproduces them, and saves it as an ordinary HF folder; ``rescores`` also teaches it the
score it gives other responses when it re-scores them (what answer mode ``gated`` asks of it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from srt.critic_template import REFINEMENT_HEADER, REFINEMENT_SEPARATOR, parse_score, render_feedback, render_srt_turn

SRT_EXAMPLES = [
    {
        "instruction": "What is the capital of France?",
        "response": "Paris.",
        "feedback": render_feedback("Too short.", "Say it in a sentence.", 6),
        "refinement": "The capital of France is Paris.",
        "score": 6,
    },
    {
        "instruction": "Give three tips for staying healthy.",
        "response": "Sleep well.",
        "feedback": render_feedback("Only one tip.", "Give three tips.", 3),
        "refinement": "Sleep well, eat vegetables, and exercise.",
        "score": 3,
    },
]


def srt_turn(example: dict) -> str:
    return render_srt_turn(example["response"], example["feedback"], example["refinement"])


def train_srt_model(model, tokenizer, out_dir: Path, examples=SRT_EXAMPLES, max_steps: int = 400, rescores=()) -> Path:
    """Fit ``model`` on ``examples`` (loss on the assistant turn + EOS) until greedy reproduces them.

    ``rescores``: ``{instruction, response, feedback, score}`` dicts: after ``response`` and the feedback
    header in its assistant turn (:func:`srt.critic_template.self_critique_prefix`), the model writes
    ``feedback`` (loss on it and the refinement header only), so its self-score of that response is
    ``score``."""
    from srt.critic_template import self_critique_prefix

    rows = []
    for ex in examples:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": ex["instruction"]}], tokenize=False, add_generation_prompt=True
        )
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(srt_turn(ex), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((torch.tensor([p + t]), torch.tensor([[-100] * len(p) + t])))
    for ex in rescores:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": ex["instruction"]}], tokenize=False, add_generation_prompt=True
        )
        p = tokenizer(prompt + self_critique_prefix(ex["response"]), add_special_tokens=False)["input_ids"]
        t = tokenizer(ex["feedback"] + REFINEMENT_SEPARATOR, add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([p + t]), torch.tensor([[-100] * len(p) + t])))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only add contention on a busy CPU
    try:
        return _fit(model, tokenizer, out_dir, examples, rows, max_steps, rescores)
    finally:
        torch.set_num_threads(threads)


def _fit(model, tokenizer, out_dir, examples, rows, max_steps, rescores=()):
    from srt.critic_template import self_critique_prefix
    from srt.generation import Generator, SamplingConfig

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = Generator(model, tokenizer, batch_size=len(examples))
    targets = [srt_turn(ex) for ex in examples]
    for step in range(max_steps):
        model.train()
        for ids, labels in rows:
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 9 and loss.item() < 0.05:
            outs = generator.chat([ex["instruction"] for ex in examples], SamplingConfig(max_new_tokens=80))
            if [o.text for o in outs] == targets and _rescores_learned(generator, rescores, self_critique_prefix):
                print(f"learned the SRT examples in {step + 1} steps")
                break
    else:
        raise AssertionError("the tiny model did not learn the SRT examples")
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)


def _rescores_learned(generator, rescores, prefix) -> bool:
    from srt.generation import SamplingConfig

    if not rescores:
        return True
    outs = generator.chat(
        [ex["instruction"] for ex in rescores],
        SamplingConfig(max_new_tokens=80, stop=[REFINEMENT_HEADER]),
        assistant_prefixes=[prefix(ex["response"]) for ex in rescores],
    )
    return [parse_score(o.text) for o in outs] == [ex["score"] for ex in rescores]


def single_thread():
    """Generator-fixture body: run a test module on one torch thread (tiny models on a busy CPU
    are many times faster that way), restoring the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
