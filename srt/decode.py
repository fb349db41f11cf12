"""The decode loop behind :class:`srt.generation.Generator`: finished rows stop costing compute.

``model.generate`` keeps every row of a batch in the forward pass until the longest one is done:
a row that reached EOS, a stop string or its token budget goes on computing padding. This loop
calls the model's own forward with the inputs ``generate`` gives it (prefill with left padding,
position ids from the mask, a 2D attention mask, ``logits_to_keep=1``, float32 logits) and, between
steps,

* **refills** a finished row's slot with the next waiting prompt (prefilled on its own, its cache
  left-padded to the batch's width and written into the slot), so a batch stays full while
  prompts wait;
* **compacts** the batch once no prompt waits: finished rows leave the batch and the cache, so the
  last, longest answers run in a small batch;
* **trims** cache columns that are padding for every row left (they accumulate with refills);
* keeps keys and values in a preallocated slab per layer (:func:`_slab_layer_class`) instead of
  ``DynamicLayer``'s concatenation, which copies the whole cache at every step;
* prefills a prefix shared by every prompt of a batch (a chat template's system prompt) once.

Greedy picks the argmax, sampling goes through the caller's ``pick``; EOS, stop strings
(transformers' own ``StopStringCriteria``) and ``max_new_tokens`` end a row where ``generate``
ends it.

How close the arithmetic stays to ``generate``'s: a matmul row's result must not depend on how
many rows the batch has, and BLAS picks other kernels (which round differently) for a matrix of
few rows, so compaction never shrinks a batch below :func:`row_floor` rows, probed on the model's
shapes, dtype and thread count. With ``shared_prefix=False`` and no refill (every prompt in one
batch) a row is computed as in ``generate``'s batch. A shared prefix and a refill move a row's
real columns relative to its padding, which changes the order in which attention sums them:
logits can differ in the last bits, so a greedy token can differ only where two candidates tie
to within rounding (tests/test_decode.py and benchmarks/generation.py compare with ``generate``).

:func:`unsupported` names what this loop does not handle (encoder-decoder models, a cache other
than the plain dynamic one, generation-config settings that change decoding such as a repetition
penalty); the generator then falls back to ``model.generate``.
"""

from __future__ import annotations

import inspect
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

PROBE_ROWS = 64  # row_floor's probe: the largest batch it compares smaller ones with
PROBE_MAX_WEIGHT = 4_000_000  # row_floor probes linear shapes up to this many weights
MIN_PREFIX = 8  # a prefix shared by every prompt of a call is prefilled once when at least this long
PREFILL_ROWS = 16  # shared prefill runs the prompts' remainders in chunks of this many rows
TRIM_COLUMNS = 32  # trim the cache once this many leading columns are padding for every row

# Generation-config fields whose value generate() would act on, with the value that does
# nothing. Fields not listed here and not in _IGNORED must be None for this loop to run.
_NEUTRAL: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "min_length": 0,
    "min_new_tokens": 0,
    "use_cache": True,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "guidance_scale": 1.0,
    "low_memory": False,
    "token_healing": False,
    "use_mtp": False,
}
# Fields the caller sets (max_new_tokens, eos / pad ids, greedy with sampling in ``pick``), that
# only apply to sampling warpers generate() does not run with do_sample=False, to beam search,
# or that only shape what generate() returns.
_IGNORED = {
    "max_length",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "top_h",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "early_stopping",
    "length_penalty",
    "diversity_penalty",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "compile_config",
    "disable_compile",
    "is_assistant",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "target_lookbehind",
    "transformers_version",
    "_from_model_config",
}


def unsupported(model: Any) -> str | None:
    """Why this loop cannot run ``model`` exactly like ``generate`` (None: it can)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    params = set(inspect.signature(model.forward).parameters)
    missing = {"input_ids", "attention_mask", "position_ids", "past_key_values"} - params
    if missing and "kwargs" not in params:
        return f"its forward takes no {', '.join(sorted(missing))}"
    supports_cache = getattr(model, "_supports_default_dynamic_cache", None)
    if callable(supports_cache) and not supports_cache():
        return "it does not use transformers' DynamicCache"
    try:
        cache = DynamicCache(config=config.get_text_config(decoder=True))
    except Exception as exc:  # noqa: BLE001 - any failure means: let generate() decide
        return f"DynamicCache(config=...) failed ({exc})"
    kinds = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if kinds:
        return f"its cache has {', '.join(sorted(kinds))} layers (sliding window or linear attention)"
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        for key, value in generation_config.to_dict().items():
            if key in _IGNORED or value is None or (key in _NEUTRAL and value == _NEUTRAL[key]):
                continue
            if isinstance(value, (list, dict)) and not value:
                continue
            return f"generation_config.{key}={value!r} changes decoding"
    return None


@dataclass
class DecodeStats:
    """What the loop computed: for tokens/s, time per step and the share of useful rows."""

    prompts: int = 0
    new_tokens: int = 0
    decode_steps: int = 0  # forward passes of one token per row
    row_steps: int = 0  # rows computed, summed over decode steps
    token_row_steps: int = 0  # of those, rows that produced a token (the others: filler up to row_floor)
    prefill_calls: int = 0
    prefill_positions: int = 0  # rows x width of every prefill, padding included
    prefill_tokens: int = 0  # real prompt tokens
    refills: int = 0
    compactions: int = 0
    trims: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


class _Row:
    """One prompt: its position in the call, its tokens, the new tokens so far, whether it ended."""

    __slots__ = ("index", "prompt", "tokens", "done")

    def __init__(self, index: int, prompt: list[int]):
        self.index, self.prompt, self.tokens, self.done = index, prompt, [], False


_FLOORS: dict[tuple, int] = {}


def _linear_shapes(model: Any) -> list[tuple[int, int]]:
    """The distinct ``(out, in)`` shapes of the model's linear layers small enough to probe cheaply
    (the LM head, ``vocab x hidden``, is left out: its rows only feed the argmax)."""
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sorted(s for s in shapes if s[0] * s[1] <= PROBE_MAX_WEIGHT) or [(256, 256)]


def row_floor(model: Any) -> int:
    """The fewest rows a batch may shrink to with every row computed as in a larger batch.

    Probed once per device, dtype, thread count and set of shapes: for each linear shape, a matmul
    of random data for every m below :data:`PROBE_ROWS` rows against the first m rows of the full
    product. Where no small m is safe (a differing m over half the probe) the floor is "never
    shrink" (``sys.maxsize``).
    """
    weight = next(model.parameters())
    shapes = _linear_shapes(model)
    key = (str(weight.device), weight.dtype, torch.get_num_threads(), tuple(shapes))
    if key not in _FLOORS:
        gen = torch.Generator().manual_seed(0)
        bad = 0
        with torch.inference_mode():
            for out_features, in_features in shapes:
                w = torch.randn(out_features, in_features, generator=gen).to(weight.device, weight.dtype)
                x = torch.randn(PROBE_ROWS, in_features, generator=gen).to(weight.device, weight.dtype)
                full = F.linear(x, w)
                for m in range(PROBE_ROWS - 1, bad, -1):  # only m above what is already known to differ
                    if not torch.equal(F.linear(x[:m], w), full[:m]):
                        bad = m
                        break
        _FLOORS[key] = bad + 1 if bad + 1 <= PROBE_ROWS // 2 else sys.maxsize
    return _FLOORS[key]


def _slab_layer_class():
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in a preallocated slab: ``update`` writes the
        new columns in place, where ``DynamicLayer`` concatenates, which copies the whole cache at
        every step (at batch 48 and 250 columns that copy costs a fifth of a SmolLM2 step on CPU).
        ``keys`` / ``values`` are views of the slab's first ``length`` columns; attention reads them
        as it reads ``DynamicLayer``'s tensors (same kernels, same results)."""

        def __init__(self, room: int):
            super().__init__()
            self.room = room  # free columns kept after the last one whenever the slab is (re)allocated
            self.slab_k = self.slab_v = None
            self.length = 0

        def _views(self) -> None:
            self.keys = self.slab_k[:, :, : self.length]
            self.values = self.slab_v[:, :, : self.length]

        def _realloc(self, columns: int, offset: int = 0) -> None:
            """A new slab of ``columns`` columns holding the current ones from column ``offset`` on
            (the ``offset`` columns before them are zeros: padding that attention masks)."""
            b, h, _, d = self.slab_k.shape
            k = self.slab_k.new_zeros((b, h, columns, d))
            v = self.slab_v.new_zeros((b, self.slab_v.shape[1], columns, self.slab_v.shape[-1]))
            k[:, :, offset : offset + self.length] = self.slab_k[:, :, : self.length]
            v[:, :, offset : offset + self.length] = self.slab_v[:, :, : self.length]
            self.slab_k, self.slab_v, self.length = k, v, self.length + offset

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self.slab_k is None:
                b, h, _, d = key_states.shape
                self.slab_k = key_states.new_zeros((b, h, n + self.room, d))
                self.slab_v = value_states.new_zeros((b, value_states.shape[1], n + self.room, value_states.shape[-1]))
            elif self.length + n > self.slab_k.shape[-2]:
                self._realloc(self.length + n + self.room)
            self.slab_k[:, :, self.length : self.length + n] = key_states
            self.slab_v[:, :, self.length : self.length + n] = value_states
            self.length += n
            self._views()
            return self.keys, self.values

        def allocate(self, batch: int, columns: int, keys: torch.Tensor, values: torch.Tensor) -> None:
            """An all-zero slab for ``batch`` rows of ``columns`` columns (heads, dim, dtype like ``keys``)."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            self.slab_k = keys.new_zeros((batch, keys.shape[1], columns + self.room, keys.shape[-1]))
            self.slab_v = values.new_zeros((batch, values.shape[1], columns + self.room, values.shape[-1]))
            self.length = columns
            self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.slab_k, self.slab_v = self.slab_k[indices], self.slab_v[indices]
            self._views()

        def trim_left(self, cut: int) -> None:
            self.slab_k, self.slab_v = self.slab_k[:, :, cut:], self.slab_v[:, :, cut:]
            self.length -= cut
            self._views()

        def pad_left(self, columns: int) -> None:
            self._realloc(self.length + columns + self.room, offset=columns)
            self._views()

        def write_rows(self, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
            """Put rows (``[k, heads, w, dim]``, w <= length) in ``index``, right-aligned, zeros before."""
            pad = self.length - keys.shape[-2]
            self.keys.index_copy_(0, index, F.pad(keys, (0, 0, pad, 0)))
            self.values.index_copy_(0, index, F.pad(values, (0, 0, pad, 0)))

    return SlabLayer


def _forward_kwargs(model: Any) -> dict[str, Any]:
    """``logits_to_keep=1`` where the model takes it, as generate() passes it: prefill then projects
    only the last position through the LM head. A PEFT wrapper passes it on to its base model."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    params = set(inspect.signature(base.forward).parameters)
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def decode(
    model: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    pick: Callable[[torch.Tensor, list[int]], torch.Tensor],
    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stop_window: int = 0,
    on_done: Callable[[int, list[int]], None] | None = None,
    device: torch.device | str | None = None,
    stats: DecodeStats | None = None,
    shared_prefix: bool = True,
) -> list[list[int]]:
    """New tokens for each prompt (each list ends with the token that ended it: EOS, the last
    token of a stop string, or the ``max_new_tokens``-th), prompts taken in the given order.

    ``pick(logits, indices)``: next tokens for float32 logits ``[rows, vocab]`` of the prompts
    ``indices`` (greedy: the argmax). ``stop(ids)``: which rows of ``ids`` (the last
    ``stop_window`` tokens of each row, prompt included, left-padded) end with a stop string.
    ``on_done(index, tokens)`` is called as each prompt finishes. ``stats`` accumulates counts.
    ``shared_prefix=False`` prefills every batch as ``generate`` does (padding first).
    """
    loop = _Loop(
        model,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos_token_ids,
        pad_token_id=pad_token_id,
        pick=pick,
        stop=stop,
        stop_window=stop_window,
        on_done=on_done,
        device=device,
        stats=stats if stats is not None else DecodeStats(),
        shared_prefix=shared_prefix,
    )
    return loop.run([list(p) for p in prompts])


class _Loop:
    def __init__(
        self,
        model,
        *,
        batch_size,
        max_new_tokens,
        eos_token_ids,
        pad_token_id,
        pick,
        stop,
        stop_window,
        on_done,
        device,
        stats,
        shared_prefix,
    ):
        self.model, self.batch_size, self.max_new_tokens = model, batch_size, max_new_tokens
        self.eos = {int(t) for t in eos_token_ids}
        self.pad, self.pick, self.stop, self.stop_window = pad_token_id, pick, stop, stop_window
        self.on_done, self.stats, self.shared = on_done, stats, shared_prefix
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.extra = _forward_kwargs(model)
        self.cache_config = model.config.get_text_config(decoder=True)
        self.slab = _slab_layer_class()
        self.floor = row_floor(model)
        # The shared prefix runs as one prompt, a matmul of as many rows as it has tokens: no fewer than the floor.
        self.min_prefix = max(MIN_PREFIX, min(self.floor, PROBE_ROWS))
        self.prefix_len = 0  # the prefix all prompts of the call share, and its keys/values per layer
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- one batch of slots -------------------------------------------------------------------

    def run(self, prompts: list[list[int]]) -> list[list[int]]:
        self.results: list[list[int] | None] = [None] * len(prompts)
        self.stats.prompts += len(prompts)
        self._compute_prefix(prompts)
        queue = deque(_Row(i, p) for i, p in enumerate(prompts))
        self.rows: list[_Row] = []
        while queue or any(not r.done for r in self.rows):
            if not any(not r.done for r in self.rows):  # a fresh batch (no shared prefix: generate()'s prefill)
                fresh = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                self.cache, self.mask, self.pos, self.cur, self.start = self._prefill(fresh, self.max_new_tokens)
                self.rows = fresh
                self.any_padding = self.mask is not None
                continue
            dead = [s for s, r in enumerate(self.rows) if r.done]
            if dead and queue:
                self._refill(dead, [queue.popleft() for _ in range(min(len(dead), len(queue)))])
                continue
            if dead:
                self._compact(dead)
            self._trim()
            self._step()
        return self.results  # type: ignore[return-value]

    def _batch_tensors(self, rows: list[_Row]):
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt, dtype=torch.long)
            mask[i, width - len(r.prompt) :] = 1
        return ids.to(self.device), mask.to(self.device), width

    def _prefill(self, rows: list[_Row], room: int):
        """Prefill ``rows`` into a new cache with ``room`` free columns per layer; returns the cache,
        the 2D mask (None: no padding), next position ids, first tokens and leading padding per row.

        Without a shared prefix this is generate()'s prefill: one left-padded batch, position ids
        from the mask, the mask dropped when it is all ones."""
        from transformers.cache_utils import DynamicCache

        if self.prefix_len:
            return self._prefill_shared(rows, room)
        t0 = time.perf_counter()
        ids, mask, width = self._batch_tensors(rows)
        pos = mask.cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 0)
        full = bool((mask == 1).all())
        cache = DynamicCache(config=self.cache_config)
        cache.layers = [self.slab(room) for _ in cache.layers]
        out = self.model(
            input_ids=ids,
            attention_mask=None if full else mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
            **self.extra,
        )
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        del out
        tokens = self.pick(logits, [r.index for r in rows])
        self.stats.prefill_calls += 1
        self.stats.prefill_positions += ids.numel()
        self.stats.prefill_tokens += sum(len(r.prompt) for r in rows)
        self._record(rows, tokens)
        start = torch.tensor([width - len(r.prompt) for r in rows], dtype=torch.long)
        self.stats.prefill_s += time.perf_counter() - t0
        return cache, (None if full else mask), pos[:, -1] + 1, tokens, start

    def _compute_prefix(self, prompts: list[list[int]]) -> None:
        """Keys and values of the prefix every prompt of the call shares (a chat template's system
        prompt), computed once; none when it is shorter than ``min_prefix`` or there is one prompt."""
        from transformers.cache_utils import DynamicCache

        self.prefix_len, self.prefix_kv = 0, []
        if not self.shared or len(prompts) < 2:
            return
        limit = min(len(p) for p in prompts) - 1  # every row keeps a token of its own: its logits start it
        first = prompts[0]
        n = 0
        while n < limit and all(p[n] == first[n] for p in prompts):
            n += 1
        if n < self.min_prefix:
            return
        t0 = time.perf_counter()
        cache = DynamicCache(config=self.cache_config)
        self.model(
            input_ids=torch.tensor([first[:n]], dtype=torch.long, device=self.device),
            position_ids=torch.arange(n, device=self.device)[None],
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
            **self.extra,
        )
        self.stats.prefill_positions += n
        self.stats.prefill_s += time.perf_counter() - t0
        self.prefix_len, self.prefix_kv = n, [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill_shared(self, rows: list[_Row], room: int):
        """``_prefill`` after :meth:`_compute_prefix`: the prefix's keys and values copied into every
        row, the rest of each prompt run in chunks of similar length.

        Row layout in the cache: ``[prefix | padding | rest of the prompt]`` (generate() lays a row
        out as ``[padding | prompt]``); the attention mask and position ids say which is which.
        """
        from transformers.cache_utils import DynamicCache

        t0 = time.perf_counter()
        prompts = [r.prompt for r in rows]
        shared = self.prefix_len
        lengths = [len(p) - shared for p in prompts]
        rest = max(lengths)
        width = shared + rest
        layers = [self.slab(room) for _ in range(self.cache_config.num_hidden_layers)]
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        mask[:, :shared] = 1
        logits = []
        order = sorted(range(len(rows)), key=lambda i: -lengths[i])
        for a in range(0, len(rows), PREFILL_ROWS):
            chunk = order[a : a + PREFILL_ROWS]
            w = max(lengths[i] for i in chunk)
            ids = torch.full((len(chunk), w), self.pad, dtype=torch.long)
            part = torch.zeros((len(chunk), w), dtype=torch.long)
            for j, i in enumerate(chunk):
                ids[j, w - lengths[i] :] = torch.tensor(prompts[i][shared:], dtype=torch.long)
                part[j, w - lengths[i] :] = 1
            ids, part = ids.to(self.device), part.to(self.device)
            cache = DynamicCache(config=self.cache_config)
            for layer, (k, v) in zip(cache.layers, self.prefix_kv):
                layer.update(k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1))
            out = self.model(
                input_ids=ids,
                attention_mask=torch.cat([part.new_ones((len(chunk), shared)), part], dim=-1),
                position_ids=(part.cumsum(-1) - 1).masked_fill(part == 0, 0) + shared,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
                **self.extra,
            )
            logits.append(out.logits[:, -1].to(copy=True, dtype=torch.float32))
            del out
            index = torch.tensor(chunk, dtype=torch.long, device=self.device)
            for main, layer in zip(layers, cache.layers):
                if main.slab_k is None:
                    main.allocate(len(rows), width, layer.keys, layer.values)
                main.keys[index, :, width - w :] = layer.keys[:, :, shared:]
                main.values[index, :, width - w :] = layer.values[:, :, shared:]
            mask[index, shared:] = F.pad(part, (rest - w, 0))
            self.stats.prefill_positions += ids.numel()
        for main, (k, v) in zip(layers, self.prefix_kv):
            main.keys[:, :, :shared] = k
            main.values[:, :, :shared] = v
        cache = DynamicCache(config=self.cache_config)
        cache.layers = layers
        scores = torch.empty((len(rows), logits[0].shape[-1]), dtype=torch.float32, device=self.device)
        scores[torch.tensor(order, device=self.device)] = torch.cat(logits)
        tokens = self.pick(scores, [r.index for r in rows])
        self.stats.prefill_calls += 1
        self.stats.prefill_tokens += sum(len(p) for p in prompts)
        self._record(rows, tokens)
        start = torch.zeros(len(rows), dtype=torch.long)  # the prefix comes first: no leading padding
        pos = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=self.device)
        self.stats.prefill_s += time.perf_counter() - t0
        return cache, mask, pos, tokens, start

    def _record(self, rows: list[_Row], tokens: torch.Tensor) -> None:
        """Append each live row's token and end the rows that are done (EOS, length, stop string)."""
        values = tokens.tolist()
        live = [i for i, r in enumerate(rows) if not r.done]
        for i in live:
            rows[i].tokens.append(values[i])
        self.stats.new_tokens += len(live)
        ended = [i for i in live if values[i] in self.eos or len(rows[i].tokens) >= self.max_new_tokens]
        if self.stop is not None:
            rest = sorted(set(live) - set(ended))
            if rest:
                window = self.stop_window
                ids = torch.full((len(rest), window), self.pad, dtype=torch.long)
                for j, i in enumerate(rest):
                    tail = (rows[i].prompt + rows[i].tokens)[-window:]
                    ids[j, window - len(tail) :] = torch.tensor(tail, dtype=torch.long)
                hits = self.stop(ids.to(self.device)).tolist()
                ended += [i for j, i in enumerate(rest) if hits[j]]
        for i in ended:
            row = rows[i]
            row.done = True
            self.results[row.index] = row.tokens
            if self.on_done is not None:
                self.on_done(row.index, row.tokens)

    # -- between steps --------------------------------------------------------------------------

    def _refill(self, slots: list[int], new: list[_Row]) -> None:
        """Prefill ``new`` on their own and write them into the finished rows' ``slots``."""
        self.stats.refills += 1
        cache, mask, pos, tokens, start = self._prefill(new, room=0)
        t0 = time.perf_counter()
        width = cache.get_seq_length()
        length = self.cache.get_seq_length()
        if self.mask is None:
            self.mask = torch.ones((len(self.rows), length), dtype=torch.long, device=self.device)
        if mask is None:
            mask = torch.ones((len(new), width), dtype=torch.long, device=self.device)
        if width > length:  # a longer prompt than the batch's columns: pad the whole batch on the left
            grow = width - length
            for layer in self.cache.layers:
                layer.pad_left(grow)
            self.mask = F.pad(self.mask, (grow, 0))
            self.start += grow
            length = width
        index = torch.tensor(slots[: len(new)], dtype=torch.long, device=self.device)
        for layer, fresh in zip(self.cache.layers, cache.layers):
            layer.write_rows(index, fresh.keys, fresh.values)
        self.mask[index] = F.pad(mask, (length - width, 0))
        self.pos[index] = pos
        self.cur[index] = tokens
        self.start[index.cpu()] = start + (length - width)
        for slot, row in zip(slots, new):
            self.rows[slot] = row
        self.any_padding = True
        self.stats.prefill_s += time.perf_counter() - t0

    def _compact(self, dead: list[int]) -> None:
        """Drop finished rows, keeping at least row_floor rows (finished ones as filler)."""
        keep = [s for s, r in enumerate(self.rows) if not r.done]
        floor = min(self.floor, len(self.rows))
        if len(keep) < floor:
            keep = sorted(keep + dead[: floor - len(keep)])
        if len(keep) == len(self.rows):
            return
        self.stats.compactions += 1
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        if self.mask is not None:
            self.mask = self.mask[index]
        self.pos, self.cur = self.pos[index], self.cur[index]
        self.start = self.start[index.cpu()]
        self.rows = [self.rows[s] for s in keep]

    def _trim(self) -> None:
        """Drop leading cache columns that are padding for every row (they accumulate with refills)."""
        if self.mask is None or not self.any_padding:
            return
        cut = int(self.start.min())
        if cut < TRIM_COLUMNS:
            return
        self.stats.trims += 1
        for layer in self.cache.layers:
            layer.trim_left(cut)
        self.mask = self.mask[:, cut:]
        self.start -= cut

    def _step(self) -> None:
        t0 = time.perf_counter()
        rows = self.rows
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=-1)
        out = self.model(
            input_ids=self.cur[:, None],
            attention_mask=self.mask,
            position_ids=self.pos[:, None],
            past_key_values=self.cache,
            use_cache=True,
            return_dict=True,
            **self.extra,
        )
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        del out
        tokens = self.pick(logits, [r.index for r in rows])
        done = torch.tensor([r.done for r in rows], device=tokens.device)
        tokens = tokens.masked_fill(done, self.pad)  # filler rows feed padding, like generate()
        live = len(rows) - int(done.sum())
        self.stats.decode_steps += 1
        self.stats.row_steps += len(rows)
        self.stats.token_row_steps += live
        self._record(rows, tokens)
        self.cur = tokens
        self.pos = self.pos + 1
        self.stats.decode_s += time.perf_counter() - t0
