"""Batched generation with any transformers causal LM.

Decoding runs in :mod:`srt.decode` (the model's own forward, finished rows leave the batch and
waiting prompts take their slots); ``model.generate`` runs instead where that loop does not
apply (:func:`srt.decode.unsupported`) or with ``Generator(decode_loop=False)``. Both give the
same greedy tokens and the same samples. What this adds on top of ``generate``:

* left padding done here (whatever the tokenizer's ``padding_side``), prompts sorted by length so
  a batch wastes little padding, outputs returned in input order;
* **per-prompt random streams**: each prompt samples from its own ``torch.Generator`` seeded from
  ``(seed, key)`` (key = the prompt text and its occurrence number, or a caller-given id), so a
  sample does not depend on the batch size, the batch it landed in, or how many batches ran
  before: a resumed run reproduces the samples of an uninterrupted one;
* ``finish_reason`` per output ("eos", "stop" for a stop string, "length"), stop strings trimmed;
* a tqdm bar with ETA and generated tokens/s.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from srt.decode import DecodeStats, decode, unsupported
from srt.errors import ConfigError

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


@dataclass
class SamplingConfig:
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: list[str] = field(default_factory=list)  # e.g. ["### Improved Response"] to re-score only

    def __post_init__(self):
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise ConfigError("sampling.stop must not contain empty strings")


@dataclass
class GenerationOutput:
    text: str
    num_prompt_tokens: int
    num_new_tokens: int
    finish_reason: Literal["eos", "stop", "length"]


def _row_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def _sample(scores: torch.Tensor, temperature: float, top_p: float, generators: Sequence[torch.Generator]):
    """Temperature + top-p sampling with one random stream per row, by inverse CDF: each row draws
    one uniform number per step from its own CPU generator, so a row's samples do not depend on
    the other rows of its batch."""
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest set whose mass reaches top_p (always at least the top token).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    uniforms = torch.cat([torch.rand(1, generator=g) for g in generators]).to(probs.device)
    cdf = probs.cumsum(-1)
    tokens = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).clamp_(max=probs.shape[-1] - 1)
    return tokens.squeeze(-1)


class _PerRowSampler(LogitsProcessor):
    """:func:`_sample` as a logits processor for ``model.generate`` (the fallback path).

    ``generate`` runs greedy (``do_sample=False``); this processor leaves only the sampled token
    finite, so argmax picks it.
    """

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = _sample(scores, self.temperature, self.top_p, self.generators)
        picked = torch.full_like(scores, float("-inf"))
        return picked.scatter_(-1, tokens.unsqueeze(-1), 0.0)


class ChatGeneration:
    """Chat-template rendering shared by in-process and remote generation; subclasses provide
    ``tokenizer`` and ``generate(prompts, sampling, desc=..., keys=...)``."""

    def render_chat(
        self,
        instructions_or_messages: Sequence[str | Messages],
        assistant_prefixes: Sequence[str] | None = None,
        system_prompt: str | None = None,
    ) -> list[str]:
        """Chat-template texts ending with an open assistant turn (plus an optional partial answer)."""
        if assistant_prefixes is not None and len(assistant_prefixes) != len(instructions_or_messages):
            raise ConfigError(
                f"got {len(assistant_prefixes)} assistant_prefixes for {len(instructions_or_messages)} conversations"
            )
        texts = []
        for i, item in enumerate(instructions_or_messages):
            messages = [{"role": "user", "content": item}] if isinstance(item, str) else list(item)
            if system_prompt is not None and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            texts.append(text + (assistant_prefixes[i] if assistant_prefixes is not None else ""))
        return texts

    def chat(
        self,
        instructions_or_messages: Sequence[str | Messages],
        sampling: SamplingConfig,
        assistant_prefixes: Sequence[str] | None = None,
        system_prompt: str | None = None,
        desc: str = "chat",
        keys: Sequence[str] | None = None,
    ) -> list[GenerationOutput]:
        """Answer instructions (or whole conversations) with the chat template.

        ``assistant_prefixes[i]`` continues a partly written assistant turn (e.g. the self critic
        passes ``response + "\\n\\n### Feedback\\n"``); the returned text is only what comes after it.
        """
        prompts = self.render_chat(instructions_or_messages, assistant_prefixes, system_prompt)
        return self.generate(prompts, sampling, desc=desc, keys=keys)


class Generator(ChatGeneration):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        decode_loop: bool = True,
    ):
        if batch_size < 1:
            raise ConfigError(f"generation batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.decode_loop = decode_loop  # False: always model.generate (srt.decode otherwise, where it applies)
        self.stats = DecodeStats()  # what srt.decode computed, summed over calls
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if device is not None:
            self.model.to(self.device)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        if not eos:
            raise ConfigError(f"model/tokenizer {getattr(tokenizer, 'name_or_path', '')!r} define no EOS token")
        self.eos_token_ids = sorted(set(eos))
        # Padding is masked out of attention, so any id works; fall back to EOS when there is no pad.
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, dtype: str = "auto", device: str = "cpu", batch_size: int = 8, **load_kwargs
    ) -> Generator:
        from srt.models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=dtype, device=device, **load_kwargs)
        return cls(model, tokenizer, batch_size=batch_size)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        sampling: SamplingConfig,
        desc: str = "generate",
        keys: Sequence[str] | None = None,
    ) -> list[GenerationOutput]:
        """Generate for already-rendered prompts (tokenized with ``add_special_tokens=False``).

        ``keys`` (optional, one per prompt, e.g. record ids) name each prompt's random stream;
        by default the stream is named by the prompt text and its occurrence number in ``prompts``,
        so repeated prompts (best-of-n) get different samples.
        """
        if keys is not None and len(keys) != len(prompts):
            raise ConfigError(f"got {len(keys)} keys for {len(prompts)} prompts")
        if not prompts:
            return []
        if keys is None:
            seen: dict[str, int] = {}
            keys = []
            for prompt in prompts:
                seen[prompt] = seen.get(prompt, -1) + 1
                keys.append(f"{prompt}\x00{seen[prompt]}")
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows early
        outputs: list[GenerationOutput | None] = [None] * len(prompts)
        seeds = [_row_seed(sampling.seed, key) for key in keys]

        new_tokens, start = 0, time.perf_counter()
        with tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True) as bar:

            def done(i: int, out: GenerationOutput) -> None:
                nonlocal new_tokens
                outputs[i] = out
                new_tokens += out.num_new_tokens
                bar.update(1)
                bar.set_postfix(tok_per_s=f"{new_tokens / max(time.perf_counter() - start, 1e-9):.1f}")

            reason = self._why_generate(encoded)
            if reason is None:
                self._decode([encoded[i] for i in order], order, sampling, seeds, done)
            else:
                logger.debug("generation through model.generate: %s", reason)
                for offset in range(0, len(order), self.batch_size):
                    rows = order[offset : offset + self.batch_size]
                    batch = self._generate_batch([encoded[i] for i in rows], sampling, [seeds[i] for i in rows])
                    for i, out in zip(rows, batch):
                        done(i, out)
        return outputs  # type: ignore[return-value]

    def _why_generate(self, encoded: list[list[int]]) -> str | None:
        """Why this call goes through ``model.generate`` rather than :mod:`srt.decode` (None: it does not)."""
        if not self.decode_loop:
            return "Generator(decode_loop=False)"
        if any(not ids for ids in encoded):
            return "an empty prompt"
        return unsupported(self.model)

    def _decode(self, batch: list[list[int]], indices: list[int], sampling: SamplingConfig, seeds, done) -> None:
        """Every prompt through :func:`srt.decode.decode` (``indices[k]`` is ``batch[k]``'s position in the call)."""
        if sampling.temperature > 0:
            generators = {i: torch.Generator().manual_seed(seeds[i]) for i in indices}

            def pick(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
                return _sample(logits, sampling.temperature, sampling.top_p, [generators[indices[r]] for r in rows])

        else:

            def pick(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
                return logits.argmax(dim=-1)

        stop, window = None, 0
        if sampling.stop:
            from transformers.generation.stopping_criteria import StopStringCriteria

            criteria = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=sampling.stop)
            stop, window = (lambda ids: criteria(ids, None)), criteria.maximum_token_len

        decode(
            self.model,
            batch,
            batch_size=self.batch_size,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            pick=pick,
            stop=stop,
            stop_window=window,
            on_done=lambda k, tokens: done(indices[k], self._finish(tokens, len(batch[k]), sampling)),
            device=self.device,
            stats=self.stats,
        )

    def _generate_batch(
        self, batch: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[GenerationOutput]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding: every prompt ends where generation starts
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1

        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            processors.append(_PerRowSampler(sampling.temperature, sampling.top_p, seeds))
        stop_kwargs = {"stop_strings": sampling.stop, "tokenizer": self.tokenizer} if sampling.stop else {}
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,  # sampling (if any) happens in _PerRowSampler
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            logits_processor=processors,
            use_cache=True,
            **stop_kwargs,
        ).cpu()
        return [self._finish(seq[width:].tolist(), len(ids), sampling) for seq, ids in zip(sequences, batch)]

    def _finish(self, new: list[int], num_prompt_tokens: int, sampling: SamplingConfig) -> GenerationOutput:
        eos_at = next((k for k, t in enumerate(new) if t in self.eos_token_ids), None)
        tokens = new if eos_at is None else new[:eos_at]
        if self.pad_token_id not in self.eos_token_ids:
            while tokens and tokens[-1] == self.pad_token_id:  # filler after a row stopped early
                tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stop_at = min((p for p in (text.find(s) for s in sampling.stop) if p >= 0), default=None)
        if stop_at is not None:
            return GenerationOutput(text[:stop_at], num_prompt_tokens, len(tokens), "stop")
        if eos_at is not None:
            return GenerationOutput(text, num_prompt_tokens, eos_at + 1, "eos")
        # Stopped early without EOS: a stop string that began inside the prompt matched.
        reason = "length" if len(tokens) >= sampling.max_new_tokens else "stop"
        return GenerationOutput(text, num_prompt_tokens, len(tokens), reason)
