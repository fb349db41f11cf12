import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM

from srt.config import LoraConfig, ModelConfig, OptimConfig, SFTConfig
from srt.data import SFTDataModule
from srt.errors import ConfigError
from srt.records import Feedback, FeedbackRecord
from srt.training.policy import accumulation_for_global_batch
from srt.training.sft import SFTModule

EXAMPLES = [
    (
        "What is the capital of France?",
        "Paris.",
        "Weaknesses: too short.",
        "Suggestions: add a sentence.",
        4,
        "The capital of France is Paris.",
    ),
    (
        "Give me three tips for staying healthy.",
        "Sleep.",
        "Weaknesses: one tip only.",
        "Suggestions: give three.",
        3,
        "Sleep well, eat vegetables, and exercise.",
    ),
    (
        "Translate: Good morning, how are you?",
        "Hola.",
        "Weaknesses: wrong language.",
        "Suggestions: use German.",
        2,
        "Guten Tag! Wie geht es Ihnen heute?",
    ),
    (
        "Explain photosynthesis simply.",
        "Plants eat.",
        "Weaknesses: vague.",
        "Suggestions: mention light.",
        5,
        "Plants turn light into food.",
    ),
]


def records():
    return [
        FeedbackRecord(
            id=f"r{i}",
            stage=1,
            instruction=q,
            response=a,
            feedback=Feedback(weaknesses=w, suggestions=s, score=n, raw=f"{w}\n{s}"),
            refinement=r,
        )
        for i, (q, a, w, s, n, r) in enumerate(EXAMPLES)
    ]


def sft_batches(tokenizer, batch_size=2):
    """Collated batches from the real data module (instruction masked, right padded), in order."""
    dm = SFTDataModule(tokenizer, SFTConfig(micro_batch_size=batch_size, max_length=256), train_records=records())
    dm.setup()
    return list(dm.predict_dataloader())


def loader(batches):
    return DataLoader(batches, batch_size=None, shuffle=False)


def trainer(max_steps, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@torch.no_grad()
def eval_loss(module, batches):
    module.model.eval()
    return sum(module.masked_lm_loss(b)[0].item() for b in batches) / len(batches)


@torch.no_grad()
def logits_of(model, batch):
    model.eval()
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_accumulation_for_global_batch():
    assert accumulation_for_global_batch(32, 4, 2) == 4
    assert accumulation_for_global_batch(8, 8, 1) == 1
    with pytest.raises(ConfigError, match="not divisible"):
        accumulation_for_global_batch(32, 3, 2)
    with pytest.raises(ConfigError):
        accumulation_for_global_batch(32, 0, 1)


def test_full_finetune_lowers_loss_and_exports(tiny_model, tiny_tokenizer, tmp_path):
    batches = sft_batches(tiny_tokenizer)
    module = SFTModule(tiny_model, tiny_tokenizer, config=SFTConfig(optim=OptimConfig(lr=5e-3, warmup_ratio=0.1)))
    module.configure_model()
    before = eval_loss(module, batches)
    trainer(30).fit(module, loader(batches))
    after = eval_loss(module, batches)
    assert after < 0.6 * before, (before, after)
    # The cosine schedule decays to (almost) zero at the last step.
    assert module.trainer.optimizers[0].param_groups[0]["lr"] < 5e-3 * 0.01

    out = module.save_hf(tmp_path / "full")
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert not list(tmp_path.glob(".full.tmp-*"))  # the temporary folder was renamed away
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(logits_of(reloaded, batches[0]), logits_of(module.model, batches[0]), atol=1e-6)


def test_lora_lowers_loss_and_exports_adapter_and_merged(tiny_model, tiny_tokenizer, tiny_model_dir, tmp_path):
    from peft import PeftModel

    batches = sft_batches(tiny_tokenizer)
    torch.manual_seed(0)  # LoRA A matrices are initialized from the global RNG
    config = SFTConfig(lora=LoraConfig(r=16, alpha=64, dropout=0.0), optim=OptimConfig(lr=5e-3, warmup_ratio=0.0))
    module = SFTModule(tiny_model, tiny_tokenizer, config=config)
    module.configure_model()
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.5 * sum(p.numel() for p in module.model.parameters())
    before = eval_loss(module, batches)
    trainer(40).fit(module, loader(batches))
    after = eval_loss(module, batches)
    # LoRA (embeddings and LM head frozen) moves the random tiny model more slowly than full FT.
    assert after < before - 0.4, (before, after)

    adapter_dir = module.save_hf(tmp_path / "adapter")
    assert (adapter_dir / "adapter_config.json").is_file()
    assert not (adapter_dir / "config.json").exists()  # adapter only, not full weights
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, adapter_dir)
    expected = logits_of(module.model, batches[1])
    assert torch.allclose(logits_of(reloaded, batches[1]), expected, atol=1e-5)

    merged_dir = module.save_hf(tmp_path / "merged", merge_lora=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(logits_of(merged, batches[1]), expected, atol=1e-5)
    # The live PeftModel is untouched by the merged export.
    assert torch.equal(logits_of(module.model, batches[1]), expected)

    # Exporting again over an existing folder replaces it atomically.
    module.save_hf(tmp_path / "merged", merge_lora=True)
    assert json.loads((merged_dir / "config.json").read_text())["num_hidden_layers"] == 2


def test_builds_from_path_in_configure_model_and_logs(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batches = sft_batches(tok)
    module = SFTModule(str(tiny_model_dir), config=SFTConfig(optim=OptimConfig(lr=1e-3), gradient_checkpointing=True))
    assert module.model is None  # loading waits for configure_model (strategies wrap it there)
    t = trainer(3, limit_val_batches=2)
    t.fit(module, loader(batches), loader(batches))
    assert module.tokenizer is not None and module.model.config.use_cache is False
    metrics = t.callback_metrics
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/trained_tokens_per_s", "val/loss"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["train/tokens_per_s"] > metrics["train/trained_tokens_per_s"] > 0


def test_batch_without_labels_is_an_error(tiny_model, tiny_tokenizer):
    batch = sft_batches(tiny_tokenizer)[0]
    batch["labels"][:] = -100
    module = SFTModule(tiny_model, tiny_tokenizer)
    module.configure_model()
    with pytest.raises(ConfigError, match="no labelled tokens"):
        module.masked_lm_loss(batch)


def test_merge_requires_lora(tiny_model, tiny_tokenizer, tmp_path):
    module = SFTModule(tiny_model, tiny_tokenizer)
    module.configure_model()
    with pytest.raises(ConfigError, match="merge_lora"):
        module.save_hf(tmp_path / "x", merge_lora=True)


def test_settings_come_from_the_run_config_sections(tiny_model, tiny_tokenizer, tmp_path):
    """The sft and model sections are the module's only settings: a section object or a mapping of its
    fields (validated as one); kept in checkpoints as plain dicts, which load with weights_only=True."""
    config = SFTConfig(optim=OptimConfig(lr=2e-3, weight_decay=0.1, warmup_ratio=0.0), lora=LoraConfig(r=4))
    module = SFTModule(tiny_model, tiny_tokenizer, config=config, model_config=ModelConfig(dtype="float32"))
    assert module.config is config and module.model_config.dtype == "float32"
    assert module.has_adapter and module.merges_lora  # sft.merge_lora defaults to true
    assert not SFTModule(tiny_model, config={"lora": {"r": 4}, "merge_lora": False}).merges_lora
    assert not SFTModule(tiny_model).has_adapter  # no sections: the sections' defaults (full fine-tuning)
    with pytest.raises(ConfigError, match="sft settings: optim.lr"):
        SFTModule(tiny_model, config={"optim": {"lr": -1}})
    with pytest.raises(ConfigError, match="sft settings: lr: unknown key"):
        SFTModule(tiny_model, config={"lr": 1e-3})  # settings live in their section (optim.lr)

    trainer(2).fit(module, loader(sft_batches(tiny_tokenizer)))
    assert module.trainer.optimizers[0].param_groups[0]["initial_lr"] == 2e-3  # optim.lr (the schedule peak)
    assert module.trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.1
    module.trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved["config"] == config.model_dump(mode="json") and saved["model_config"]["dtype"] == "float32"
    assert SFTModule(tiny_model, **saved).config == config  # the saved hyperparameters rebuild the module
