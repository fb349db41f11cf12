"""The model under evaluation: lazy loading, answers with an on-disk cache, and an lm-eval adapter.

Generations are cached in JSONL files (``<cache_dir>/<model name>/<cache_key>.jsonl``), one line
per answer, keyed by a hash of everything that decides the output: the model's identity (revision
plus the size and mtime of its weight files, so a retrained model in the same folder is not
mistaken for the old one), the chat template hash, the decoding settings, the answer mode, the
system prompt and the instruction. Asking again generates only the missing items, so an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from srt.errors import ConfigError, SrtError
from srt.eval.benchmark import ANSWER_MODES, writes_srt_turn
from srt.generation import Generator, SamplingConfig
from srt.inference import MODES, SelfRefiner
from srt.io import json_sha256
from srt.records import JsonLines, JsonlWriter

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def sampling_config(value: SamplingConfig | dict[str, Any] | None, **defaults: Any) -> SamplingConfig:
    """A SamplingConfig from a config mapping (unknown keys are errors) or an existing one."""
    if isinstance(value, SamplingConfig):
        return value
    merged = {**defaults, **(value or {})}
    known = set(SamplingConfig.__dataclass_fields__)
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(f"unknown sampling setting(s) {unknown}; known: {sorted(known)}")
    return SamplingConfig(**merged)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other value as given."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _hash(obj: Any) -> str:
    return json_sha256(obj, 16)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


class EvalModel:
    """A model to evaluate, loaded on first use.

    ``path``: anything :func:`srt.models.resolve_model_path` understands (``tiny``, a local folder,
    a hub id). ``answer_mode``: ``plain`` (the model's answer), ``srt`` (the refinement of its
    own response -> feedback -> refinement pass) or ``gated`` (that pass, then the refinement only
    when the model's separate self-score of it beats its response's, else the response;
    :meth:`srt.inference.SelfRefiner.gated`). ``sampling``: decoding of answers (default:
    greedy, 1024 new tokens). ``candidate_sampling``: the ``rerank`` candidates (default T=0.7,
    same length and seed). ``score_sampling``: self-scores (default greedy, 512 new tokens).
    ``device``: a torch device, or ``auto`` (``cuda`` when a GPU is visible, else ``cpu``; resolved
    here, so the plan and the run record name the device used). ``cache_dir``: where generations are
    cached (the runner sets it).
    """

    def __init__(
        self,
        name: str,
        path: str,
        answer_mode: str = "plain",
        dtype: str = "auto",
        batch_size: int = 8,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        system_prompt: str | None = None,
        revision: str | None = None,
        device: str = "cpu",
        cache_dir: str | Path | None = None,
        candidate_sampling: SamplingConfig | dict[str, Any] | None = None,
        score_sampling: SamplingConfig | dict[str, Any] | None = None,
    ):
        if answer_mode not in ANSWER_MODES:
            raise ConfigError(f"model {name!r}: answer_mode must be one of {ANSWER_MODES}, got {answer_mode!r}")
        if batch_size < 1:
            raise ConfigError(f"model {name!r}: batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.path = str(path)
        self.answer_mode = answer_mode
        self.dtype = dtype
        self.batch_size = batch_size
        try:
            self.sampling = sampling_config(sampling, temperature=0.0, max_new_tokens=1024)
            self.candidate_sampling = sampling_config(
                candidate_sampling,
                temperature=0.7,
                max_new_tokens=self.sampling.max_new_tokens,
                seed=self.sampling.seed,
            )
            self.score_sampling = sampling_config(score_sampling, temperature=0.0, max_new_tokens=512)
        except (TypeError, ValueError) as exc:  # SamplingConfig's own checks
            raise ConfigError(f"model {name!r}: invalid sampling settings: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
        self.system_prompt = system_prompt
        self.revision = revision
        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._generator: Generator | None = None
        self._tokenizer = None
        self._identity: dict[str, Any] | None = None

    # -- loading -----------------------------------------------------------------------------

    @property
    def resolved_path(self) -> str:
        from srt.models import resolve_model_path

        return resolve_model_path(self.path)

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            from srt.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(
                self.path, dtype=self.dtype, device=self.device, revision=self.revision
            )
            self._generator = Generator(model, tokenizer, batch_size=self.batch_size)
            self._tokenizer = tokenizer
        return self._generator

    @property
    def model(self):
        return self.generator.model

    @property
    def tokenizer(self):
        """The tokenizer alone is cheap: loading it does not load the weights."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.resolved_path, revision=self.revision)
            except OSError:  # e.g. an adapter folder without a tokenizer: the full load finds the base's
                self._tokenizer = self.generator.tokenizer
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        return self._generator is not None

    def unload(self) -> None:
        """Drop the weights (the next use loads them again)."""
        self._generator = None

    def refiner(self) -> SelfRefiner:
        return SelfRefiner(
            self.generator,
            sampling=self.sampling,
            candidate_sampling=self.candidate_sampling,
            score_sampling=self.score_sampling,
            system_prompt=self.system_prompt,
        )

    def hf_lm(self, batch_size: int | None = None, **kwargs: Any):
        """This model as lm-eval's ``HFLM`` (the already-loaded model object, not a re-load)."""
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size or self.batch_size, **kwargs)

    # -- identity ----------------------------------------------------------------------------

    @property
    def chat_template_hash(self) -> str:
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates
            template = json.dumps(template, sort_keys=True)
        return _hash(template) if template else "none"

    def identity(self) -> dict[str, Any]:
        """What the model *is*: revision and a fingerprint of its weight files (name, size, mtime)."""
        if self._identity is None:
            from srt.models import model_revision

            path = Path(self.resolved_path)
            files = []
            if path.is_dir():
                for file in sorted(path.iterdir()):
                    if file.name.endswith(_WEIGHT_SUFFIXES) or file.name in ("config.json", "adapter_config.json"):
                        stat = file.stat()
                        files.append([file.name, stat.st_size, stat.st_mtime_ns])
            self._identity = {
                "revision": self.revision or model_revision(self.path),
                "weights_fingerprint": _hash(files) if files else None,
            }
        return self._identity

    def decoding(self) -> dict[str, Any]:
        return {
            "answer_mode": self.answer_mode,
            "sampling": asdict(self.sampling),
            "candidate_sampling": asdict(self.candidate_sampling),
            "score_sampling": asdict(self.score_sampling),
            "system_prompt": self.system_prompt,
        }

    def describe(self) -> dict[str, Any]:
        """For the run record: model path, revision, chat template hash, decoding settings, seed."""
        return {
            "name": self.name,
            "path": self.path,
            "resolved_path": self.resolved_path,
            **self.identity(),
            "chat_template_hash": self.chat_template_hash,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "seed": self.sampling.seed,
            **self.decoding(),
        }

    # -- cached answers ----------------------------------------------------------------------

    def answers(
        self,
        items: Sequence[dict[str, Any]],
        cache_key: str,
        *,
        mode: str | None = None,
        n: int = 16,
        scoring: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Answer ``items`` (dicts with ``instruction`` and optional ``id``), one result dict each.

        ``mode``: ``plain`` | ``srt`` | ``gated`` | ``rerank`` (default: the model's ``answer_mode``); ``n`` and
        ``scoring`` (``srt`` | ``critic_prompt``) are for ``rerank``. Each result holds ``id``,
        ``instruction``, ``answer`` and ``trace`` (the full :class:`srt.inference.SrtAnswer`).
        """
        mode = mode or self.answer_mode
        if mode not in MODES:
            raise ConfigError(f"unknown answer mode {mode!r}; use one of {', '.join(MODES)}")
        scoring = scoring or self._default_scoring()
        # Only what decides these outputs: a change of, say, score_sampling keeps plain answers cached.
        settings: dict[str, Any] = {
            "mode": mode,
            "sampling": asdict(self.sampling),
            "system_prompt": self.system_prompt,
        }
        if mode == "rerank":
            settings.update(
                n=n,
                scoring=scoring,
                candidate_sampling=asdict(self.candidate_sampling),
                score_sampling=asdict(self.score_sampling),
            )
        elif mode == "gated":  # srt.inference: the refinement's separate self-score decides the answer
            settings["score_sampling"] = asdict(self.score_sampling)

        def compute(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            refiner = self.refiner()
            results = refiner.run([it["instruction"] for it in batch], mode=mode, n=n, via=scoring)
            return [{"answer": r.answer, "trace": r.to_dict()} for r in results]

        return self._cached(items, cache_key, settings, ("instruction",), compute, cache_dir)

    def self_scores(
        self,
        items: Sequence[dict[str, Any]],
        cache_key: str,
        *,
        via: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """The model's own score of each ``{instruction, response}`` item: ``{score, feedback, failure}``.

        ``via``: ``srt`` (self-critique inside the assistant turn; default for ``srt`` and ``gated``
        models) or ``critic_prompt`` (the critic prompt as a user message; default for ``plain`` models).
        """
        via = via or self._default_scoring()
        settings = {
            "task": "self_score",
            "via": via,
            "score_sampling": asdict(self.score_sampling),
            "system_prompt": self.system_prompt,
        }

        def compute(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            scores = self.refiner().score(
                [it["instruction"] for it in batch], [it["response"] for it in batch], via=via
            )
            return [asdict(s) for s in scores]

        return self._cached(items, cache_key, settings, ("instruction", "response"), compute, cache_dir)

    def _default_scoring(self) -> str:
        return "srt" if writes_srt_turn(self.answer_mode) else "critic_prompt"

    def _cached(
        self,
        items: Sequence[dict[str, Any]],
        cache_key: str,
        settings: dict[str, Any],
        fields: tuple[str, ...],
        compute: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        cache_dir: str | Path | None,
    ) -> list[dict[str, Any]]:
        for i, item in enumerate(items):
            for f in fields:
                if not isinstance(item.get(f), str):
                    raise SrtError(f"{cache_key}: item {item.get('id', i)!r} has no text field {f!r}")
        base = {**self.identity(), "chat_template_hash": self.chat_template_hash, **settings}
        keys = [_hash({**base, **{f: item[f] for f in fields}}) for item in items]

        cache_root = Path(cache_dir) if cache_dir is not None else self.cache_dir
        path = cache_root / _safe_name(self.name) / f"{_safe_name(cache_key)}.jsonl" if cache_root else None
        done: dict[str, dict[str, Any]] = _read_cache(path) if path else {}

        missing = {i for i, key in enumerate(keys) if key not in done}
        # Duplicate prompts are generated once.
        todo = list({keys[i]: i for i in sorted(missing)}.values())
        if todo:
            chunk = self.batch_size * 4  # write every few batches so an interruption loses little
            writer = JsonlWriter(path) if path else None
            try:
                for start in tqdm(range(0, len(todo), chunk), desc=f"{self.name}: {cache_key}", unit="chunk"):
                    batch = [items[i] for i in todo[start : start + chunk]]
                    for i, result in zip(todo[start : start + chunk], compute(batch)):
                        done[keys[i]] = result
                        if writer:
                            writer.write({"key": keys[i], "id": str(items[i].get("id", i)), "result": result})
            finally:
                if writer:
                    writer.close()
        out = []
        for i, item in enumerate(items):
            result = dict(done[keys[i]])
            out.append(
                {"id": str(item.get("id", i)), **{f: item[f] for f in fields}, **result, "cached": i not in missing}
            )
        return out


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Cached results by key, read with the project's one JSONL line loop (:class:`srt.records.JsonLines`):
    an unterminated last line left by an interrupted write is skipped (the writer cuts it on reopen);
    any other bad line is ``<file>:<line>: <reason>``."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    lines = JsonLines(path)
    for lineno, raw, entry in lines:
        if not isinstance(entry.get("key"), str) or not isinstance(entry.get("result"), dict):
            lines.bad(
                lineno,
                raw,
                "not a generation cache line (needs a string 'key' and a 'result' object); "
                "delete the file to regenerate",
            )
        done[entry["key"]] = entry["result"]
    return done
