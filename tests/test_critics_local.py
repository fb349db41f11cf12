"""The local critics: reference (rule-based), hf (a transformers model) and self (the SRT model)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from srt.critic import CritiqueRequest
from srt.critic_template import ParsedCritique, ParseFailure, parse_critique, parse_score
from srt.registry import CRITICS, load_plugin

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many clips did she sell altogether?"


# ---------------------------------------------------------------------------------------------
# reference critic


@pytest.fixture()
def reference_critic():
    return load_plugin(CRITICS, "reference").from_config({})


def _critique(critic, response, reference=GSM8K_GOLD, mode="critique"):
    reply = critic.critique([CritiqueRequest("r1", QUESTION, response, reference=reference, mode=mode)])[0]
    assert reply.error is None, reply.error
    return reply


@pytest.mark.parametrize(
    "response, score",
    [
        ("In May she sold 48/2 = 24 clips, so 48 + 24 = 72 in total. The answer is 72.", 10),
        ("The answer is 72. Check: 72 - 48 = 24, which is half of 48.", 10),  # work after the statement
        ("She sold 24 clips in May and 48 in April, 72 clips in total", 9),  # correct, answer implicit
        ("72", 7),
        ("The answer is 72.", 7),
        ("She sold 48 + 12 = 60 clips. The answer is 60.", 4),
        ("60", 3),
        ("I am not sure how to solve this problem.", 2),
        ("", 1),
    ],
)
def test_reference_rubric(reference_critic, response, score):
    parsed = parse_critique(_critique(reference_critic, response).text)
    assert isinstance(parsed, ParsedCritique), parsed
    assert parsed.score == score
    assert parsed.weaknesses and parsed.suggestions


def test_reference_feedback_names_the_problem(reference_critic):
    wrong = parse_critique(_critique(reference_critic, "48 + 12 = 60. The answer is 60.").text)
    assert "60 is wrong" in wrong.weaknesses and "72" in wrong.weaknesses
    missing = parse_critique(_critique(reference_critic, "I am not sure how to solve this problem.").text)
    assert "no numeric final answer" in missing.weaknesses
    bare = parse_critique(_critique(reference_critic, "72").text)
    assert "no reasoning" in bare.weaknesses and "step" in bare.suggestions.lower()


def test_reference_refinement_is_the_cleaned_gold_and_scores_top(reference_critic):
    parsed = parse_critique(_critique(reference_critic, "60").text)
    assert parsed.improved_response == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is 72."
    )
    rescore = _critique(reference_critic, parsed.improved_response, mode="score").text
    assert "### Improved Response" not in rescore  # score mode writes only the feedback
    assert parse_score(rescore) == 10
    # The refinement wins over a wrong response and ties with a correct worked one.
    correct = parse_critique(_critique(reference_critic, "48/2 = 24 and 48 + 24 = 72. The answer is 72.").text)
    assert parsed.score < 10 == correct.score


@pytest.mark.parametrize(
    "response, gold, correct",
    [
        ("Total: 1,234 + 0 = 1234. The answer is 1,234.", "#### 1,234", True),
        ("The answer is 1234.", "#### 1,234", True),
        ("The answer is $1,234.50", "#### 1234.5", True),
        ("x = 10 - 13 = -3, so the answer is -3.", "#### -3", True),
        ("48-24 = 24 clips", "#### -24", False),  # a binary minus is not a sign
        ("The answer is 2.5", "#### 5/2", True),
        ("The answer is 0.5", "#### 2.5", False),
        ("The answer is 72,000", "#### 72", False),
        ("答案是72", "72", True),  # numbers inside CJK text
        ("The answer is 42.", "42", True),  # a bare-number gold
    ],
)
def test_reference_number_formats(reference_critic, response, gold, correct):
    parsed = parse_critique(_critique(reference_critic, response, reference=gold).text)
    assert isinstance(parsed, ParsedCritique)
    assert (parsed.score >= 7) is correct


def test_reference_gold_formats():
    from srt_builtin.critics.reference_critic import clean_gold_solution, gold_answer

    assert gold_answer("#### 1,234") == 1234
    assert gold_answer("some steps 3 + 4 = 7\n#### -7.5") == Fraction(-15, 2)
    assert gold_answer("42") == 42
    assert gold_answer("So she has 12 apples left. The answer is 12.") == 12
    assert clean_gold_solution("42", Fraction(42)) == "The answer is 42."
    assert clean_gold_solution("#### 1,234", Fraction(1234)) == "The answer is 1234."
    assert clean_gold_solution("So 5 + 7 = 12 apples", Fraction(12)) == "So 5 + 7 = 12 apples\nThe answer is 12."


def test_reference_errors_and_determinism(reference_critic):
    requests = [
        CritiqueRequest("a", QUESTION, "The answer is 72.", reference=None),
        CritiqueRequest("b", QUESTION, "The answer is 72.", reference="no number here"),
        CritiqueRequest("c", QUESTION, "48 + 24 = 72. The answer is 72.", reference=GSM8K_GOLD),
    ]
    first = reference_critic.critique(requests)
    assert first[0].text is None and first[0].error == "reference critic needs a gold answer"
    assert first[1].text is None and "no numeric final answer" in first[1].error
    assert first[2].error is None
    second = reference_critic.critique(requests)
    assert [r.text for r in first] == [r.text for r in second]
    desc = reference_critic.describe()
    assert desc["name"] == "reference" and desc["template_hash"]


def test_reference_rejects_unknown_settings():
    from srt.errors import CriticError

    with pytest.raises(CriticError, match="reference"):
        load_plugin(CRITICS, "reference").from_config({"tolerance": 1})


# ---------------------------------------------------------------------------------------------
# hf and self critics on the tiny Llama

WRONG, RIGHT = "2 + 2 = 5.", "2 + 2 = 4. The answer is 4."
ADD_QUESTION = "What is 2 + 2?"
# (response, feedback parts, score): the critique taught for each response; the refinement is RIGHT.
TAUGHT = {
    WRONG: ("- The sum is wrong.", "- Add again: 2 + 2 = 4.", 3),
    RIGHT: ("- It is very short.", "- Keep the check.", 9),
}


def _train_to_emit(model, tokenizer, examples, max_steps=300, lr=1e-2):
    """Overfit ``model`` so that after each prompt text it writes its target text and EOS (plain torch)."""
    import torch

    batch = []
    for prompt, target in examples:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        batch.append((torch.tensor(prompt_ids + target_ids), len(prompt_ids)))
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        labels[row, n_prompt : len(ids)] = ids[n_prompt:]
        mask[row, : len(ids)] = 1
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(max_steps):  # until memorized: greedy decoding then reproduces the targets
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        if loss.item() < 0.02:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02, f"tiny model did not memorize its targets (loss {loss.item():.3f})"
    return model.eval()


def _user_turn(tokenizer, content):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


@pytest.fixture(scope="module")
def trained_critic_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama taught to answer the critic prompt for WRONG with a fixed critique.

    One example only: the critic prompt is ~430 tiny-tokenizer tokens, so training is the slow part.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srt.critic_template import render_critic_prompt, render_critique

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
    w, s, score = TAUGHT[WRONG]
    examples = [(_user_turn(tokenizer, render_critic_prompt(ADD_QUESTION, WRONG)), render_critique(w, s, score, RIGHT))]
    out = tmp_path_factory.mktemp("trained-critic")
    _train_to_emit(model, tokenizer, examples).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_hf_critic_untrained_model_batched_deterministic(tiny_model_dir, tiny_tokenizer):
    from srt.critic_template import render_critic_prompt

    critic = load_plugin(CRITICS, "hf").from_config(
        {"model": str(tiny_model_dir), "max_new_tokens": 12, "batch_size": 2, "device": "cpu"}
    )
    responses = ["Paris.", "The capital of France is Paris, a large city.", "It is Paris, I think."]
    requests = [CritiqueRequest(f"q{i}", "What is the capital of France?", r) for i, r in enumerate(responses)]
    first = critic.critique(requests)
    assert len(first) == 3
    for request, reply in zip(requests, first):
        # In request order: each reply's prompt length is that of its own rendered critic prompt.
        prompt = _user_turn(tiny_tokenizer, render_critic_prompt(request.instruction, request.response))
        assert reply.usage["prompt_tokens"] == len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 0 < reply.usage["completion_tokens"] <= 12
        assert reply.error is None
        assert isinstance(parse_critique(reply.text), ParseFailure)  # garbage is a parse failure, not a crash
    assert [r.text for r in critic.critique(requests)] == [r.text for r in first]  # T=0: deterministic
    too_long = CritiqueRequest("long", "Repeat.", "Paris " * 1200)  # beyond the tiny model's 1024 positions
    long_reply, short_reply = critic.critique([too_long, requests[0]])
    assert long_reply.text is None and "does not fit the critic model's context of 1024" in long_reply.error
    assert short_reply.text == first[0].text
    desc = critic.describe()
    assert desc["name"] == "hf" and desc["model"] == str(tiny_model_dir)
    assert desc["revision"].startswith("sha256:") and desc["template_hash"] and desc["max_new_tokens"] == 12


def test_hf_critic_trained_critique_and_score_mode(trained_critic_dir):
    from srt.critic_template import render_critique

    critic = load_plugin(CRITICS, "hf").from_config(
        {"model": str(trained_critic_dir), "max_new_tokens": 120, "batch_size": 2, "device": "cpu"}
    )
    requests = [
        CritiqueRequest("a", ADD_QUESTION, WRONG),
        CritiqueRequest("a", ADD_QUESTION, WRONG, mode="score"),
    ]
    critique, score = critic.critique(requests)
    assert critique.text == render_critique(*TAUGHT[WRONG], RIGHT)
    parsed = parse_critique(critique.text)
    assert isinstance(parsed, ParsedCritique), critique
    assert (parsed.score, parsed.improved_response) == (3, RIGHT)
    assert parsed.weaknesses == "- The sum is wrong." and parsed.suggestions == "- Add again: 2 + 2 = 4."
    assert critique.usage["finish_reason"] == "eos"
    # Score mode stops at the improved-response header: same score, fewer tokens.
    assert score.usage["finish_reason"] == "stop" and "Improved Response" not in score.text
    assert score.usage["completion_tokens"] < critique.usage["completion_tokens"]
    assert parse_score(score.text) == 3


def test_hf_critic_needs_a_model():
    from srt.errors import CriticError

    with pytest.raises(CriticError, match="critic.model"):
        load_plugin(CRITICS, "hf").from_config({})
    with pytest.raises(CriticError, match="max_new_tokens"):
        load_plugin(CRITICS, "hf").from_config({"model": "tiny", "max_new_tokens": 0})


def test_self_critic_requires_a_policy(tiny_model_dir):
    from srt.errors import CriticError

    SelfCritic = load_plugin(CRITICS, "self")
    with pytest.raises(CriticError, match="stage-1 model"):
        SelfCritic.from_config({}, policy=None)
    with pytest.raises(CriticError, match="chat method"):
        SelfCritic.from_config({}, policy="not a generator")
    loaded = SelfCritic.from_config({"model": str(tiny_model_dir), "device": "cpu"})
    assert loaded.describe()["model"] == str(tiny_model_dir)


def test_self_critic_continues_after_the_feedback_header(tiny_model, tiny_tokenizer):
    """A tiny model trained on SRT turns (response, feedback, refinement) critiques itself."""
    from srt.critic_template import render_critique, render_feedback, render_srt_turn
    from srt.generation import Generator

    # Stage-1 format, built independently of the critic: the whole SRT turn is the assistant answer.
    examples = [
        (_user_turn(tiny_tokenizer, ADD_QUESTION), render_srt_turn(response, render_feedback(w, s, score), RIGHT))
        for response, (w, s, score) in TAUGHT.items()
    ]
    policy = Generator(_train_to_emit(tiny_model, tiny_tokenizer, examples), tiny_tokenizer, batch_size=4)
    critic = load_plugin(CRITICS, "self").from_config({"max_new_tokens": 120, "batch_size": 2}, policy=policy)
    replies = critic.critique(
        [
            CritiqueRequest("w", ADD_QUESTION, WRONG),
            CritiqueRequest("r", ADD_QUESTION, RIGHT),
            CritiqueRequest("w", ADD_QUESTION, RIGHT, mode="score"),  # re-score the refinement
        ]
    )
    # The reply is exactly the continuation after the feedback header: the critic output format.
    w, s, score = TAUGHT[WRONG]
    assert replies[0].text == render_critique(w, s, score, RIGHT)
    assert replies[2].text.rstrip() == render_feedback(*TAUGHT[RIGHT])
    wrong, right = (parse_critique(r.text) for r in replies[:2])
    assert isinstance(wrong, ParsedCritique) and isinstance(right, ParsedCritique), replies
    assert (wrong.score, wrong.improved_response) == (3, RIGHT)
    assert wrong.suggestions == "- Add again: 2 + 2 = 4."
    assert right.score == 9
    assert replies[2].usage["finish_reason"] == "stop" and parse_score(replies[2].text) == 9
    assert critic.generator.model is policy.model and critic.generator.batch_size == 2  # no second copy
    desc = critic.describe()
    assert desc["name"] == "self" and desc["temperature"] == 0.0 and desc["template_hash"]

    class ChatOnly:  # what a generation-server client offers: only ``chat`` (here backed by the real model)
        def chat(self, *args, **kwargs):
            return policy.chat(*args, **kwargs)

    remote = load_plugin(CRITICS, "self").from_config({"max_new_tokens": 120}, policy=ChatOnly())
    assert [r.text for r in remote.critique([CritiqueRequest("w", ADD_QUESTION, WRONG)])] == [replies[0].text]
