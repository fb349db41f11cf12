"""Preflight checks on a tokenizer before training (or generation) with a chat template.

These catch the pitfalls that silently train a model wrongly:

* **pad == eos**: collators mask padding out of the labels by token id, so the EOS that ends
  each answer is masked too and the model never learns to stop.
* **no pad token**: batches cannot be padded at all.
* **double BOS**: most chat templates render BOS themselves; tokenizing the rendered text with
  ``add_special_tokens=True`` then adds a second one. The right way is
  :func:`encode_chat_prefix` (``add_special_tokens=False``); the check verifies that this gives
  exactly one BOS when the model uses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srt.errors import TemplateError

SAMPLE_CONVERSATION = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
]


def encode_chat_prefix(
    tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False
) -> list[int]:
    """Render ``messages`` with the chat template and tokenize without adding special tokens.

    The template already renders BOS (and the turn markers), so ``add_special_tokens=False`` is the
    way to get exactly what the template says.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _leading_bos(ids: Sequence[int], bos_id: int | None) -> int:
    count = 0
    while bos_id is not None and count < len(ids) and ids[count] == bos_id:
        count += 1
    return count


def _adds_bos_itself(tokenizer: Any) -> bool:
    """True if plain ``tokenizer(text)`` prepends BOS, i.e. the model was trained with one."""
    ids = tokenizer("hello", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def check_tokenizer(tokenizer: Any, *, for_training: bool = True, eos_in_labels_guaranteed: bool = False) -> list[str]:
    """Return warnings; raise :class:`TemplateError` for problems that would train the model wrongly.

    ``for_training=False`` (generation only) turns the pad problems into warnings: padding there
    is only masked in attention, never in labels.
    ``eos_in_labels_guaranteed=True`` accepts pad == eos when the caller builds label masks from
    the attention mask / segment spans (not from ``input_ids == pad_token_id``).
    """
    warnings: list[str] = []
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__

    def problem(message: str, fatal: bool) -> None:
        if fatal:
            raise TemplateError(f"tokenizer {name!r}: {message}")
        warnings.append(message)

    pad_id, eos_id, bos_id = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos_id is None:
        problem("has no EOS token; the model cannot learn or signal where an answer ends", for_training)
    if pad_id is None:
        problem(
            "has no pad token. Add one that is not EOS, e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}) "
            "+ model.resize_token_embeddings(len(tokenizer)), or reuse an unused reserved token",
            for_training,
        )
    elif pad_id == eos_id and not eos_in_labels_guaranteed:
        problem(
            f"pad token == EOS token ({tokenizer.eos_token!r}, id {eos_id}): masking padding out of the labels "
            "also masks the EOS that ends every answer, so the model never learns to stop. Set a distinct pad "
            "token, or pass eos_in_labels_guaranteed=True if labels are masked from the attention mask",
            for_training,
        )

    if not getattr(tokenizer, "chat_template", None):
        problem(
            "has no chat_template; set one (tokenizer.chat_template = '...') or pick an instruct model's tokenizer",
            True,
        )

    try:
        ids = encode_chat_prefix(tokenizer, SAMPLE_CONVERSATION)
    except Exception as err:  # a template that cannot render a plain user/assistant exchange
        raise TemplateError(f"tokenizer {name!r}: chat template fails on a sample conversation: {err}") from err

    n_bos = _leading_bos(ids, bos_id)
    adds_bos = _adds_bos_itself(tokenizer)
    if n_bos > 1:
        problem(f"the chat template renders {n_bos} BOS tokens at the start (expected exactly one)", True)
    if n_bos == 0 and adds_bos:
        problem(
            f"the chat template renders no BOS, but the tokenizer adds {tokenizer.bos_token!r} to plain text, so the "
            "model expects one: add '{{ bos_token }}' at the start of the chat template",
            True,
        )
    if n_bos == 1 and adds_bos:
        text = tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False)
        if _leading_bos(tokenizer(text, add_special_tokens=True)["input_ids"], bos_id) > 1:
            warnings.append(
                "tokenizing the rendered chat with add_special_tokens=True gives a double BOS; "
                "srt tokenizes with srt.tokenizer_check.encode_chat_prefix (add_special_tokens=False): do the same"
            )

    if eos_id is not None:
        # The assistant's answer should be closed by EOS (that is what the model learns to emit).
        answer = tokenizer(SAMPLE_CONVERSATION[-1]["content"], add_special_tokens=False)["input_ids"]
        tail = ids[-(len(answer) + 4) :]
        if eos_id not in tail:
            warnings.append(
                f"the chat template does not close the assistant turn with EOS ({tokenizer.eos_token!r}); "
                "the model may not learn to stop where generation stops"
            )
    return warnings
