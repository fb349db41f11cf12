"""The tokenizer's chat template, split into the pieces a training sequence is built from.

srt trains inside the model's own chat format: the prompt text comes from the template (system
prompt, user turn, generation prompt), and the end-of-turn text is what the template writes after
an assistant message, cut right after EOS. Both are found by rendering a probe conversation, so
the template owns BOS (exactly one, or one per turn where BOS is the turn marker) and EOS.
"""

from __future__ import annotations

from srt.errors import ConfigError, TemplateError


class ChatFormat:
    """The tokenizer's chat template, split into the pieces the segment builder needs.

    ``prompt(user_text)``: system prompt (if any) + user turn + generation prompt.
    ``end_of_turn``: what the template writes after an assistant message, cut right after EOS
    (a trailing newline after EOS is never trained). If the template writes no EOS there, EOS is
    appended so the model still learns to stop.
    ``prepend_bos``: the tokenizer normally adds BOS but the template does not render it, so the
    prompt ids get it prepended. ``bos_per_conversation``: how many BOS ids one conversation may hold.
    """

    _PROBE_USER = "srt probe instruction"
    _PROBE_ASSISTANT = "srt probe answer"

    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                "set tokenizer.chat_template (srt trains inside the model's chat format)"
            )
        if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
            raise TemplateError("tokenizer has no EOS token: the model could never learn to stop")
        self.end_of_turn = self._find_end_of_turn()
        eot_ids = tokenizer(self.end_of_turn, add_special_tokens=False)["input_ids"]
        if eot_ids[-1:] != [tokenizer.eos_token_id]:
            raise TemplateError(
                f"end of turn {self.end_of_turn!r} does not tokenize to ids ending with EOS "
                f"{tokenizer.eos_token_id} (got {eot_ids}): EOS would never be trained"
            )
        self.prepend_bos = self._template_lacks_bos()
        # How many BOS tokens one rendered conversation legitimately holds: 1 for most templates,
        # one per turn where BOS doubles as the turn marker (ChatML models whose bos is <|im_start|>).
        probe = self.tokenizer.apply_chat_template(
            self._messages(self._PROBE_USER) + [{"role": "assistant", "content": self._PROBE_ASSISTANT}], tokenize=False
        )
        ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
        turn_marker = (
            tokenizer.bos_token_id is not None
            and ids.count(tokenizer.bos_token_id) > 1
            and ids[:2] != [tokenizer.bos_token_id] * 2
        )  # not simply a BOS rendered twice at the start
        self.bos_per_conversation = ids.count(tokenizer.bos_token_id) + int(self.prepend_bos) if turn_marker else 1

    def _messages(self, user_text: str, context=()) -> list[dict[str, str]]:
        history = [m if isinstance(m, dict) else m.model_dump() for m in context]
        has_system = any(m["role"] == "system" for m in history)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt and not has_system else []
        return messages + history + [{"role": "user", "content": user_text}]

    def prompt(self, user_text: str, context=()) -> str:
        """The rendered prompt: system prompt (unless the context has its own), the earlier turns,
        the user's instruction and the generation prompt."""
        return self.tokenizer.apply_chat_template(
            self._messages(user_text, context), add_generation_prompt=True, tokenize=False
        )

    def _find_end_of_turn(self) -> str:
        prefix = self.prompt(self._PROBE_USER)
        full = self.tokenizer.apply_chat_template(
            self._messages(self._PROBE_USER) + [{"role": "assistant", "content": self._PROBE_ASSISTANT}],
            tokenize=False,
        )
        if not full.startswith(prefix + self._PROBE_ASSISTANT):
            raise TemplateError(
                "the chat template does not render a conversation as <prompt with generation prompt> + "
                "<assistant content> + <end of turn> (it rewrites the content or the prompt), so the "
                f"training sequence cannot be built from spans.\n  prompt: {prefix!r}\n  full:   {full!r}"
            )
        tail = full[len(prefix) + len(self._PROBE_ASSISTANT) :]
        eos = self.tokenizer.eos_token
        if eos in tail:
            return tail[: tail.index(eos) + len(eos)]
        return tail + eos

    def _template_lacks_bos(self) -> bool:
        """True when the tokenizer normally adds BOS but the template text does not render it."""
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        adds_bos = tok("a", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
        prompt_ids = tok(self.prompt(self._PROBE_USER), add_special_tokens=False)["input_ids"]
        return adds_bos and prompt_ids[:1] != [tok.bos_token_id]


def chat_format_for(tokenizer, system_prompt: str | None = None, chat: ChatFormat | None = None) -> ChatFormat:
    """``chat`` when given (built once per data module), else the tokenizer's format with ``system_prompt``."""
    if chat is None:
        return ChatFormat(tokenizer, system_prompt)
    if system_prompt is not None and system_prompt != chat.system_prompt:
        raise ConfigError(
            f"system_prompt {system_prompt!r} differs from the chat format's {chat.system_prompt!r}: pass one of them"
        )
    return chat
