import json
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from srt.config import DPOConfig, LoraConfig, OptimConfig
from srt.data import DPODataModule
from srt.errors import ConfigError
from srt.training.dpo import DPOModule
from srt.training.dpo_objective import concatenated_forward
from srt.training.reference import ReferenceLogpsCache, compute_reference_logps

PAIRS = [
    {
        "id": "p0",
        "prompt": "What is the capital of France?",
        "chosen": "The capital of France is Paris.",
        "rejected": "I am a helpful assistant.",
    },
    {
        "id": "p1",
        "prompt": "Give me three tips for staying healthy.",
        "chosen": "Sleep well, eat vegetables, and exercise.",
        "rejected": "The quick brown fox jumps over the lazy dog.",
    },
    {
        "id": "p2",
        "prompt": "How many clips did Natalia sell?",
        "chosen": "The answer is 72.",
        "rejected": "Hola, muy bien, gracias.",
    },
    {
        "id": "p3",
        "prompt": "Translate: Good morning, how are you?",
        "chosen": "Guten Tag! Wie geht es Ihnen heute?",
        "rejected": "1 + 1 = 2, 2 * 3 = 6.",
    },
]


def data_module(tokenizer, batch_size=2):
    dm = DPODataModule(tokenizer, DPOConfig(micro_batch_size=batch_size, max_length=128), train_records=PAIRS)
    dm.setup()
    return dm


def fit(module, dm, max_steps):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


@torch.no_grad()
def pair_metrics(module, dm):
    """Fresh eval pass over the training pairs: mean reward margin and accuracy."""
    module.model.eval()
    margins = []
    for batch in dm.predict_dataloader():
        out = module.compute_batch(batch)
        margins.append(out["chosen_rewards"] - out["rejected_rewards"])
    margins = torch.cat(margins)
    return margins.mean().item(), (margins > 0).float().mean().item()


def perturbed(model, scale=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def test_dpo_precomputed_raises_margins_and_accuracy(tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    dm.set_reference_logps(compute_reference_logps(tiny_model, dm.predict_dataloader()))
    config = DPOConfig(beta=0.1, optim=OptimConfig(lr=2e-3, warmup_ratio=0.0), reference="precomputed")
    module = DPOModule(tiny_model, tiny_tokenizer, config=config)
    module.configure_model()
    margin_before, acc_before = pair_metrics(module, dm)
    assert abs(margin_before) < 1e-5 and acc_before == 0.0  # policy == reference at the start
    trainer = fit(module, dm, max_steps=12)  # also runs the step-0 reference check (it passes)
    assert module._reference_checked
    margin_after, acc_after = pair_metrics(module, dm)
    assert margin_after > margin_before + 0.5, margin_after
    assert acc_after > acc_before and acc_after >= 0.75
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "nll_loss",
        "train/loss",
        "train/lr",
        "train/pairs_per_s",
    ):
        assert key in trainer.callback_metrics, key


def test_dpo_lora_adapter_disabled_trains(tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    torch.manual_seed(0)  # LoRA A matrices are initialized from the global RNG
    config = DPOConfig(
        beta=0.1,
        optim=OptimConfig(lr=1e-2, warmup_ratio=0.0),
        reference="adapter_disabled",
        reference_is_base=True,
        lora=LoraConfig(r=8, alpha=16, dropout=0.0),
    )
    module = DPOModule(tiny_model, tiny_tokenizer, config=config)
    module.configure_model()
    fit(module, dm, max_steps=12)
    assert module._reference_checked  # a fresh adapter (B = 0) leaves the base == the policy at step 0
    margin_after, acc_after = pair_metrics(module, dm)
    assert margin_after > 0.2 and acc_after >= 0.75


def test_precomputed_and_frozen_copy_give_the_same_loss(tiny_model_dir, tiny_tokenizer):
    dm = data_module(tiny_tokenizer, batch_size=4)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    perturbed(start, seed=3)  # any starting weights; the point is that both references agree
    ref = compute_reference_logps(start, dm.predict_dataloader())
    dm.set_reference_logps(ref)
    batch = next(iter(dm.predict_dataloader()))

    frozen = DPOModule(start, tiny_tokenizer, config=DPOConfig(reference="frozen_copy"))
    frozen.configure_model()
    perturbed(frozen.model, seed=4)  # the policy moves; the frozen copy must not
    pre = DPOModule(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    )  # precomputed: the default
    pre.configure_model()
    pre.model.load_state_dict(frozen.model.state_dict())
    for m in (frozen, pre):
        m.model.eval()
    with torch.no_grad():
        out_frozen, out_pre = frozen.compute_batch(batch), pre.compute_batch(batch)
    assert abs(out_frozen["loss"].item() - math.log(2)) > 1e-3  # the policy really differs from the reference
    assert abs(out_frozen["loss"].item() - out_pre["loss"].item()) < 1e-5
    assert torch.allclose(out_frozen["chosen_rewards"], out_pre["chosen_rewards"], atol=1e-5)
    assert not any(p.requires_grad for p in frozen.reference_model.parameters())


def test_step0_check_catches_precomputed_from_another_model(tiny_model, tiny_model_dir, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    other = perturbed(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), scale=0.05)
    dm.set_reference_logps(compute_reference_logps(other, dm.predict_dataloader()))
    module = DPOModule(tiny_model, tiny_tokenizer, config=DPOConfig(reference="precomputed"))
    with pytest.raises(ConfigError, match="precomputed reference log-probs do not come from the starting policy"):
        fit(module, dm, max_steps=1)
    # With the check switched off, training runs (the user asked for it).
    module = DPOModule(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        tiny_tokenizer,
        config=DPOConfig(reference="precomputed", check_reference_at_start=False),
    )
    fit(module, dm, max_steps=1)


def test_step0_check_catches_unmerged_stage1_adapter(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    # A "stage-1" LoRA adapter that was trained (non-zero B) but not merged.
    stage1 = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in stage1.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    dm = data_module(tiny_tokenizer)
    with pytest.raises(ConfigError, match="reference_is_base"):
        DPOModule(stage1, tiny_tokenizer, config=DPOConfig(reference="adapter_disabled"))
    # A user who claims the base is the stage-1 model is caught by the step-0 check.
    module = DPOModule(stage1, tiny_tokenizer, config=DPOConfig(reference="adapter_disabled", reference_is_base=True))
    with pytest.raises(ConfigError, match="pre-SFT base"):
        fit(module, dm, max_steps=1)


def test_adapter_disabled_needs_lora_and_precomputed_needs_logps(tiny_model, tiny_tokenizer):
    with pytest.raises(ConfigError, match="needs a LoRA policy"):
        DPOModule(tiny_model, tiny_tokenizer, config=DPOConfig(reference="adapter_disabled", reference_is_base=True))
    with pytest.raises(
        ConfigError, match="dpo settings: reference: .*'precomputed', 'frozen_copy' or 'adapter_disabled'"
    ):
        DPOModule(tiny_model, tiny_tokenizer, config={"reference": "base"})
    module = DPOModule(tiny_model, tiny_tokenizer, config=DPOConfig(reference="precomputed"))
    module.configure_model()
    batch = next(iter(data_module(tiny_tokenizer).predict_dataloader()))
    with pytest.raises(ConfigError, match="no ref_chosen_logps"):
        module.compute_batch(batch)


def test_ipo_uses_length_averaged_logps_and_rpo_alpha(tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    batch = next(iter(dm.predict_dataloader()))
    batch["ref_chosen_logps"] = torch.tensor([-30.0, -40.0])
    batch["ref_rejected_logps"] = torch.tensor([-35.0, -20.0])
    module = DPOModule(tiny_model, tiny_tokenizer, config=DPOConfig(loss_type="ipo", beta=0.1, rpo_alpha=0.5))
    module.configure_model()
    module.model.eval()
    with torch.no_grad():
        out = module.compute_batch(batch)
        policy = concatenated_forward(module.model, batch)
    nc, nr = policy["chosen_tokens"], policy["rejected_tokens"]
    h = (policy["chosen_logps"] / nc - policy["rejected_logps"] / nr) - (
        batch["ref_chosen_logps"] / nc - batch["ref_rejected_logps"] / nr
    )
    expected_losses = (h - 1 / (2 * 0.1)) ** 2
    nll = -policy["chosen_logps"].sum() / nc.sum()
    assert torch.allclose(out["losses"], expected_losses, atol=1e-5)
    assert abs(out["loss"].item() - (expected_losses.mean() + 0.5 * nll).item()) < 1e-4
    # Rewards stay beta * (summed policy - reference) log-probs.
    assert torch.allclose(out["chosen_rewards"], 0.1 * (policy["chosen_logps"] - batch["ref_chosen_logps"]), atol=1e-5)


def test_reference_cache_roundtrip(tmp_path, tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    cache = ReferenceLogpsCache(tmp_path / "cache")
    fields = dict(
        data_hash="abc", model="tiny@1", chat_template=tiny_tokenizer.chat_template, max_length=128, dtype="float32"
    )
    calls = []

    def compute():
        calls.append(1)
        return compute_reference_logps(tiny_model, dm.predict_dataloader())

    first = cache.get_or_compute(compute, **fields)
    second = cache.get_or_compute(compute, **fields)
    assert len(calls) == 1 and first == second and set(first) == {p["id"] for p in PAIRS}
    assert cache.key(**fields) != cache.key(**{**fields, "max_length": 256})
    assert cache.key(**fields) != cache.key(**{**fields, "model": "tiny@2"})
    assert cache.key(**fields) != cache.key(**fields, data_config={"completion_end": "feedback"})
    dm.set_reference_logps(cache.path(cache.key(**fields)))  # the data module reads the file as is
    batch = next(iter(dm.predict_dataloader()))
    assert torch.allclose(
        batch["ref_chosen_logps"].double(), torch.tensor([first[i][0] for i in batch["ids"]], dtype=torch.float64)
    )
    assert not list((tmp_path / "cache").glob(".*tmp*"))


def test_predict_step_matches_compute_reference_logps(tiny_model, tiny_tokenizer):
    dm = data_module(tiny_tokenizer)
    expected = compute_reference_logps(tiny_model, dm.predict_dataloader())
    module = DPOModule(tiny_model, tiny_tokenizer)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    outputs = trainer.predict(module, dataloaders=dm.predict_dataloader())
    got = {
        i: (c, r)
        for out in outputs
        for i, c, r in zip(out["ids"], out["ref_chosen_logps"].tolist(), out["ref_rejected_logps"].tolist())
    }
    assert got.keys() == expected.keys()
    for i in got:
        assert abs(got[i][0] - expected[i][0]) < 1e-4 and abs(got[i][1] - expected[i][1]) < 1e-4


def test_reference_cache_key_names_the_autocast(tiny_tokenizer):
    fields = dict(data_hash="abc", model="tiny@1", chat_template="t", max_length=128, dtype="auto")
    # No autocast (32-true): the key is the one computed before the field existed.
    assert ReferenceLogpsCache.key(**fields) == ReferenceLogpsCache.key(**fields, autocast=None)
    assert "autocast" not in ReferenceLogpsCache.key_fields(**fields)
    bf16 = ReferenceLogpsCache.key(**fields, autocast=torch.bfloat16)
    assert bf16 != ReferenceLogpsCache.key(**fields) and bf16 == ReferenceLogpsCache.key(**fields, autocast="bfloat16")


def test_reference_pass_on_the_trainers_device_and_autocast_passes_the_bf16_step0_check(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    """The pipeline's reference pass (srt.pipeline.train_dpo.precompute_reference) loads the start model the
    way the policy does and runs it on the trainer's device under the training precision's autocast; a
    bf16-mixed DPO run then passes the step-0 check against it. (On the CPU here; test_gpu runs on CUDA.)"""
    from srt.config import RunConfig
    from srt.pipeline.train_dpo import precompute_reference, reference_device

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = RunConfig.model_validate(
        {
            "dpo": {"micro_batch_size": 2, "max_length": 128},
            "trainer": {"accelerator": "cpu", "precision": "bf16-mixed"},
        }
    )
    assert reference_device(cfg.trainer) == torch.device("cpu")
    dm = DPODataModule(tiny_tokenizer, cfg.dpo, train_files=[pairs])
    dm.setup("fit")
    module = DPOModule(str(tiny_model_dir), tiny_tokenizer, config=cfg.dpo, model_config=cfg.model)
    reference = precompute_reference(cfg, dm, module, str(tiny_model_dir), pairs, tmp_path)
    assert module.model is None  # the reference pass loaded its own copy; the policy is built by the Trainer
    (entry,) = (tmp_path / "reference_logps").glob("ref-logps-*.pt")
    assert torch.load(entry, weights_only=True)["key_fields"]["autocast"] == "bfloat16"

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fp32 = compute_reference_logps(start, dm.predict_dataloader())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = compute_reference_logps(start, dm.predict_dataloader())
    assert reference == bf16 and reference != fp32  # it really ran under bf16 autocast
    assert all(abs(reference[k][0] - fp32[k][0]) < 1.0 for k in fp32)

    dm.set_reference_logps(reference)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert module._reference_checked


def test_reference_device_follows_the_trainer(monkeypatch):
    from srt.config import TrainerConfig
    from srt.pipeline.train_dpo import reference_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert reference_device(TrainerConfig()) == torch.device("cpu")  # auto, no GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine (no tensor is made)
    assert reference_device(TrainerConfig()) == torch.device("cuda", 0)
    assert reference_device(TrainerConfig(accelerator="gpu", devices=2)) == torch.device("cuda", 0)
    assert reference_device(TrainerConfig(accelerator="cuda", devices="2,3")) == torch.device("cuda", 2)
    assert reference_device(TrainerConfig(accelerator="cpu")) == torch.device("cpu")  # the config's accelerator


def test_dpo_hyperparameters_are_plain_dicts(tiny_model, tiny_tokenizer, tmp_path):
    dm = data_module(tiny_tokenizer)
    dm.set_reference_logps(compute_reference_logps(tiny_model, dm.predict_dataloader()))
    config = DPOConfig(beta=0.2, rpo_alpha=0.1, optim=OptimConfig(lr=1e-4))
    module = DPOModule(tiny_model, tiny_tokenizer, config=config, reference_check_tolerance=1e-2)
    assert (module.objective.beta, module.objective.rpo_alpha, module._tolerance()) == (0.2, 0.1, 1e-2)
    trainer = fit(module, dm, max_steps=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert saved["config"] == config.model_dump(mode="json") and saved["reference_check_tolerance"] == 1e-2
