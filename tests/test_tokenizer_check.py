"""Tokenizer preflight: deliberately broken tokenizers must be caught."""

import pytest
from tokenizers import processors

from srt.errors import TemplateError
from srt.tiny import CHAT_TEMPLATE, build_tiny_tokenizer
from srt.tokenizer_check import SAMPLE_CONVERSATION, check_tokenizer, encode_chat_prefix


def add_bos_on_encode(tokenizer):
    """Make plain encoding prepend BOS, like Llama tokenizers do."""
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


def test_tiny_tokenizer_passes_cleanly():
    tokenizer = build_tiny_tokenizer()
    assert check_tokenizer(tokenizer) == []
    ids = encode_chat_prefix(tokenizer, SAMPLE_CONVERSATION)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_pad_equal_to_eos_is_refused_for_training():
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(TemplateError, match="never learns to stop"):
        check_tokenizer(tokenizer)
    assert check_tokenizer(tokenizer, eos_in_labels_guaranteed=True) == []
    [warning] = check_tokenizer(tokenizer, for_training=False)
    assert "pad token == EOS" in warning


def test_missing_pad_token_suggests_a_fix():
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = None
    with pytest.raises(TemplateError, match="no pad token.*add_special_tokens"):
        check_tokenizer(tokenizer)
    assert len(check_tokenizer(tokenizer, for_training=False)) == 1


def test_missing_chat_template():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="no chat_template"):
        check_tokenizer(tokenizer, for_training=False)


def test_template_rendering_bos_twice():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    with pytest.raises(TemplateError, match="renders 2 BOS"):
        check_tokenizer(tokenizer)


def test_double_bos_from_add_special_tokens_is_reported_and_avoided():
    # Llama-3 style: the template renders BOS and the tokenizer adds one too.
    tokenizer = add_bos_on_encode(build_tiny_tokenizer())
    text = tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False)
    naive = tokenizer(text)["input_ids"]
    assert naive[:2] == [tokenizer.bos_token_id] * 2  # the pitfall is real
    assert encode_chat_prefix(tokenizer, SAMPLE_CONVERSATION)[:2] != naive[:2]  # and the helper avoids it
    [warning] = check_tokenizer(tokenizer)
    assert "double BOS" in warning and "encode_chat_prefix" in warning


def test_template_without_bos_when_model_expects_one():
    tokenizer = add_bos_on_encode(build_tiny_tokenizer())
    tokenizer.chat_template = CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    with pytest.raises(TemplateError, match="renders no BOS"):
        check_tokenizer(tokenizer)
    # A model without BOS (e.g. Qwen) is fine without one.
    plain = build_tiny_tokenizer()
    plain.chat_template = tokenizer.chat_template
    assert check_tokenizer(plain) == []


def test_assistant_turn_not_closed_by_eos_warns():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE.replace("+ eos_token +", "+")
    [warning] = check_tokenizer(tokenizer)
    assert "does not close the assistant turn with EOS" in warning


def test_template_that_fails_to_render():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('only system messages here') }}"
    with pytest.raises(TemplateError, match="fails on a sample conversation.*only system messages"):
        check_tokenizer(tokenizer)
