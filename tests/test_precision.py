"""Reduced-precision training must train: fp32 master weights under bf16 compute (issue 11, item 10).

Weights loaded in bf16 and fine-tuned at the paper's learning rates (SFT 1e-5, DPO 5e-7) must move
as much as fp32 ones do: an AdamW step of ~lr per weight is far below bf16's resolution, so srt keeps
the trainable weights in fp32 and lets ``precision="bf16-mixed"`` run the matmuls in bf16. Real code
throughout: the tiny Llama, real Lightning Trainers on CPU, real exports.
"""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from srt.config import DPOConfig, ModelConfig, OptimConfig, SFTConfig
from srt.data import DPODataModule, SFTDataModule
from srt.errors import ConfigError
from srt.records import Feedback, FeedbackRecord
from srt.training.dpo import DPOModule
from srt.training.export import cast_state_dict, save_hf
from srt.training.policy import fp32_master_weights_, needs_uniform_dtype
from srt.training.sft import SFTModule

SFT_LR, DPO_LR = 1e-5, 5e-7  # the paper's peak learning rates (Hu et al. 2024)
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}

RECORDS = [
    FeedbackRecord(
        id=f"r{i}",
        stage=1,
        instruction=q,
        response=a,
        refinement=r,
        feedback=Feedback(weaknesses="Too short.", suggestions="Say more.", score=3, raw="Too short."),
    )
    for i, (q, a, r) in enumerate(
        [
            ("What is the capital of France?", "Paris.", "The capital of France is Paris."),
            ("Give me three tips for staying healthy.", "Sleep.", "Sleep well, eat vegetables, and exercise."),
            ("Translate: Good morning, how are you?", "Hola.", "Guten Tag! Wie geht es Ihnen heute?"),
            ("Explain photosynthesis simply.", "Plants eat.", "Plants turn light into food."),
        ]
    )
]
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


def datamodule(tokenizer, mode: str) -> SFTDataModule | DPODataModule:
    if mode == "sft":
        return SFTDataModule(tokenizer, SFTConfig(micro_batch_size=2, max_length=128), train_records=RECORDS)
    return DPODataModule(tokenizer, DPOConfig(micro_batch_size=2, max_length=128), train_records=PAIRS)


class Watch(Callback):
    """Snapshots the policy once training starts (after every Lightning conversion) and records the
    dtypes of the trainable / frozen weights and the input token ids seen at every step."""

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.trainable: set[torch.dtype] = set()
        self.frozen: set[torch.dtype] = set()
        self.token_ids: set[int] = set()

    def on_train_start(self, trainer, pl_module):
        self.before = {n: p.detach().float().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for p in pl_module.model.parameters():
            (self.trainable if p.requires_grad else self.frozen).add(p.dtype)
        for key, ids in batch.items():
            if key.endswith("input_ids"):
                mask = batch[key.replace("input_ids", "attention_mask")].bool()
                self.token_ids.update(ids[mask].tolist())


def fit(module, dm, watch: Watch, *, steps: int = 2, precision: str = "bf16-mixed", callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch, *callbacks],
    )
    trainer.fit(module, datamodule=dm)
    return trainer


def changed_fraction(module, watch: Watch, names=None) -> float:
    """Share of the trainable weight elements that differ from the snapshot. The input embedding only
    counts the rows of tokens the batches contained: the other rows get no gradient at all."""
    embedding = module.model.get_input_embeddings().weight
    changed = total = 0
    for name, param in module.model.named_parameters():
        if not param.requires_grad or (names is not None and not any(n in name for n in names)):
            continue
        now, before = param.detach().float(), watch.before[name]
        if param is embedding:
            rows = torch.tensor(sorted(watch.token_ids))
            now, before = now[rows], before[rows]
        changed += int((now != before).sum())
        total += now.numel()
    assert total > 0
    return changed / total


class _NoMasterWeights:
    """The behaviour before fp32 master weights: trainable weights stay in the dtype they load in."""

    def _use_fp32_master_weights(self) -> None:
        pass

    def _check_master_weights(self) -> None:
        pass


class WithoutMasterWeights(_NoMasterWeights, SFTModule):
    pass


class DPOWithoutMasterWeights(_NoMasterWeights, DPOModule):
    pass


BF16 = ModelConfig(dtype="bfloat16")


def sft(tiny_model_dir, tokenizer, cls=SFTModule, lora=None):
    config = SFTConfig(optim=OptimConfig(lr=SFT_LR, warmup_ratio=0.0), lora=lora)
    return cls(str(tiny_model_dir), tokenizer, config=config, model_config=BF16)


def dpo(tiny_model_dir, tokenizer, cls=DPOModule):
    config = DPOConfig(optim=OptimConfig(lr=DPO_LR, warmup_ratio=0.0), reference="frozen_copy")
    return cls(str(tiny_model_dir), tokenizer, config=config, model_config=BF16)


# --------------------------------------------------------------------------------------------- training


def test_bf16_loaded_sft_full_finetune_trains_fp32_masters(tiny_model_dir, tiny_tokenizer, caplog):
    module, watch = sft(tiny_model_dir, tiny_tokenizer), Watch()
    with caplog.at_level(logging.INFO, logger="srt.training.policy"):
        fit(module, datamodule(tiny_tokenizer, "sft"), watch)
    assert module.load_dtype == torch.bfloat16
    assert watch.trainable == {torch.float32} and not watch.frozen
    assert changed_fraction(module, watch) > 0.9
    logged = [r.getMessage() for r in caplog.records if "fp32 master weights" in r.getMessage()]
    assert len(logged) == 1 and "upcast 21 bfloat16 parameter tensor(s)" in logged[0], logged


def test_bf16_loaded_dpo_full_finetune_trains_fp32_masters(tiny_model_dir, tiny_tokenizer):
    module, watch = dpo(tiny_model_dir, tiny_tokenizer), Watch()
    fit(module, datamodule(tiny_tokenizer, "dpo"), watch)  # the step-0 reference check passes too
    assert module._reference_checked
    assert watch.trainable == {torch.float32}
    assert changed_fraction(module, watch) > 0.9
    # The frozen reference keeps the load dtype (no fp32 copy of weights that never change).
    assert {p.dtype for p in module.reference_model.parameters()} == {torch.bfloat16}


def test_without_master_weights_bf16_barely_moves(tiny_model_dir, tiny_tokenizer):
    """The check above is meaningful: the same runs with the weights left in bf16 fail it by far."""
    module, watch = sft(tiny_model_dir, tiny_tokenizer, cls=WithoutMasterWeights), Watch()
    fit(module, datamodule(tiny_tokenizer, "sft"), watch)
    assert watch.trainable == {torch.bfloat16}
    assert changed_fraction(module, watch) < 0.3  # measured 0.15

    module, watch = dpo(tiny_model_dir, tiny_tokenizer, cls=DPOWithoutMasterWeights), Watch()
    fit(module, datamodule(tiny_tokenizer, "dpo"), watch)
    assert watch.trainable == {torch.bfloat16}
    assert changed_fraction(module, watch) < 0.05  # measured 0.009

    # The same in one plain AdamW step: an update of lr (Adam's first step is ~lr per weight) is lost
    # on almost every bf16 weight and kept on every fp32 one.
    weight = torch.randn(64, 64) * 0.05
    # (measured 0.06 in bf16: only the weights within ~2.5e-3 of zero, where bf16's spacing is fine enough)
    for dtype, check in ((torch.bfloat16, lambda f: f < 0.1), (torch.float32, lambda f: f == 1.0)):
        param = torch.nn.Parameter(weight.to(dtype))
        optimizer = torch.optim.AdamW([param], lr=SFT_LR, weight_decay=0.0)
        param.grad = torch.randn_like(param)
        start = param.detach().clone()
        optimizer.step()
        assert check((param.detach() != start).float().mean().item()), dtype


def test_lora_on_bf16_base_keeps_base_bf16_and_trains_fp32_adapters(tiny_model_dir, tiny_tokenizer):
    module, watch = sft(tiny_model_dir, tiny_tokenizer, lora=LORA), Watch()
    fit(module, datamodule(tiny_tokenizer, "sft"), watch)
    assert watch.frozen == {torch.bfloat16}  # the base is not upcast: LoRA keeps its memory saving
    assert watch.trainable == {torch.float32}  # peft creates the adapters in fp32
    assert changed_fraction(module, watch, names=("lora_A", "lora_B")) > 0.9
    base = [n for n, p in module.model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(dict(module.model.named_parameters())[n].float(), watch.before[n]) for n in base)


def test_given_bf16_adapter_is_upcast(tiny_model_dir, tiny_tokenizer):
    """A PeftModel passed in (continuing a stage-1 adapter) whose adapter is bf16 trains it in fp32."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), autocast_adapter_dtype=False
    )
    assert {p.dtype for n, p in peft_model.named_parameters() if "lora_" in n} == {torch.bfloat16}
    module = SFTModule(peft_model, tiny_tokenizer)
    module.configure_model()
    assert module.load_dtype == torch.bfloat16
    assert {p.dtype for p in module.model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in module.model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_fp32_master_weights_upcasts_trainable_only_and_keeps_ties():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)).to(torch.bfloat16)
    model[1].weight = model[0].weight  # tied
    frozen = torch.nn.Linear(4, 4).to(torch.bfloat16).requires_grad_(False)
    holder = torch.nn.ModuleDict({"model": model, "frozen": frozen})
    tied = model[0].weight
    assert dict(fp32_master_weights_(holder)) == {torch.bfloat16: 1}  # the tied weight once
    assert model[0].weight is tied and model[1].weight is tied and tied.dtype == torch.float32
    assert frozen.weight.dtype == torch.bfloat16
    assert dict(fp32_master_weights_(holder, all_floating=True)) == {torch.bfloat16: 2}  # FSDP1: weight + bias
    assert {p.dtype for p in holder.parameters()} == {torch.float32}
    assert not fp32_master_weights_(holder)  # idempotent


# --------------------------------------------------------------------------------------------- half-true


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_true_precision_is_refused_for_training(tiny_model_dir, tiny_tokenizer, precision):
    module = sft(tiny_model_dir, tiny_tokenizer)
    with pytest.raises(ConfigError, match=f"precision '{precision}'.*(bf16|16)-mixed.*fp32 master weights"):
        fit(module, datamodule(tiny_tokenizer, "sft"), Watch(), precision=precision)
    assert module.model is None  # refused in setup, before the weights were loaded


def test_check_training_precision_from_config_values():
    from srt.training.policy import check_training_precision

    for precision in ("bf16-mixed", "16-mixed", "32-true", "32"):
        check_training_precision(precision, "fsdp")
    with pytest.raises(ConfigError, match="bf16-mixed"):
        check_training_precision("bf16-true", "fsdp2")
    check_training_precision("bf16-true", "deepspeed")  # DeepSpeed keeps fp32 masters in its optimizer


def test_half_true_precision_still_predicts(tiny_model_dir, tiny_tokenizer):
    """Only training is refused: a prediction pass (reference log-probs) in bf16-true is fine."""
    dm = datamodule(tiny_tokenizer, "dpo")
    dm.setup()
    module = DPOModule(
        str(tiny_model_dir), tiny_tokenizer, config=DPOConfig(reference="frozen_copy"), model_config=BF16
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="bf16-true", logger=False, enable_progress_bar=False)
    out = trainer.predict(module, dataloaders=dm.predict_dataloader())
    assert sum(len(o["ids"]) for o in out) == len(PAIRS)


class CastToBF16(Callback):
    """Something that casts the module after configure_model (as a *-true precision plugin would)."""

    def on_fit_start(self, trainer, pl_module):
        pl_module.model.to(torch.bfloat16)


def test_trainable_half_weights_at_train_start_are_refused(tiny_model_dir, tiny_tokenizer):
    module = sft(tiny_model_dir, tiny_tokenizer)
    with pytest.raises(ConfigError, match="not float32 when training starts"):
        fit(module, datamodule(tiny_tokenizer, "sft"), Watch(), callbacks=[CastToBF16()])


# --------------------------------------------------------------------------------------------- FSDP


@pytest.fixture()
def one_process_group(tmp_path):
    """A 1-rank gloo group in this process (torn down afterwards)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp1_needs_one_dtype_per_unit(one_process_group, tiny_model_dir):
    """FSDP1 flattens a unit into one tensor: fp32 adapters next to a bf16 base cannot be wrapped, so
    under FSDPStrategy srt upcasts every weight; then a bf16-compute step at lr 1e-5 moves them."""
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from srt.training.distributed import fsdp2_strategy, fsdp_strategy
    from srt.training.policy import apply_lora

    assert needs_uniform_dtype(fsdp_strategy({"precision": "bf16"}))
    assert not needs_uniform_dtype(fsdp2_strategy({"precision": "bf16"})) and not needs_uniform_dtype(None)

    class Holder(torch.nn.Module):  # stands in for the LightningModule, FSDP's root unit
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids, labels=ids).loss

    def wrap(model):
        return FullyShardedDataParallel(
            Holder(model),
            auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
            use_orig_params=True,
            device_id=torch.device("cpu"),
            mixed_precision=MixedPrecision(param_dtype=torch.bfloat16),
        )

    def lora_model():
        torch.manual_seed(0)
        return apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), LORA)

    with pytest.raises(ValueError, match="uniform dtype"):
        wrap(lora_model())
    model = lora_model()
    fp32_master_weights_(model, all_floating=True)
    root = wrap(model)
    params = {n: p for n, p in root.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=SFT_LR, weight_decay=0.0)
    ids = torch.tensor([[1, 7, 30, 55, 91, 12, 4, 8, 19, 23]])
    for _ in range(2):  # two steps: lora_A gets a gradient once lora_B is non-zero
        root(ids).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert {p.dtype for p in params.values()} == {torch.float32}
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in params.items())
    assert changed / sum(p.numel() for p in params.values()) > 0.9


def test_fsdp2_sharded_export_in_the_load_dtype(one_process_group, tiny_model_dir, tmp_path):
    """FSDP2 shards per parameter (a bf16 base next to fp32 adapters is fine); the gathered export is cast."""
    from torch.distributed.device_mesh import init_device_mesh

    from srt.training.distributed import shard_model_fsdp2
    from srt.training.export import merged_lora_state_dict
    from srt.training.policy import apply_lora, load_dtype_of

    mesh = init_device_mesh("cpu", (1,))
    for lora in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        load_dtype = load_dtype_of(model)
        if lora:
            model = apply_lora(model, LORA)
            with torch.no_grad():  # a trained (non-zero) fp32 adapter, so that the merge matters
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(std=0.1)
        fp32_master_weights_(model)
        if lora:
            expected = merged_lora_state_dict(model)
            assert {v.dtype for v in expected.values()} == {torch.bfloat16}  # base bf16, fp32 delta folded in
        else:
            expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
            assert {v.dtype for v in expected.values()} == {torch.float32}
        shard_model_fsdp2(model, mesh)
        out = tmp_path / ("merged" if lora else "full")
        save_hf(model, out, merge_lora=lora, dtype=load_dtype)
        written = load_file(out / "model.safetensors")
        assert sorted(written) == sorted(expected) and {v.dtype for v in written.values()} == {torch.bfloat16}
        assert all(torch.equal(written[k], v.to(torch.bfloat16)) for k, v in expected.items())


# --------------------------------------------------------------------------------------------- export


def test_export_in_the_load_dtype(tiny_model_dir, tiny_tokenizer, tmp_path):
    module, watch = sft(tiny_model_dir, tiny_tokenizer), Watch()
    fit(module, datamodule(tiny_tokenizer, "sft"), watch)
    trained = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    assert {v.dtype for v in trained.values()} == {torch.float32}

    live_config_dtype = module.model.config.dtype
    module.save_hf(tmp_path / "model")  # default: the load dtype (bfloat16)
    module.save_hf(tmp_path / "fp32", dtype=None)  # the training dtype
    assert module.model.config.dtype == live_config_dtype == torch.bfloat16  # exports leave the live model alone
    written = load_file(tmp_path / "model" / "model.safetensors")
    assert sorted(written) == sorted(trained) and {v.dtype for v in written.values()} == {torch.bfloat16}
    assert all(torch.equal(written[k], trained[k].to(torch.bfloat16)) for k in trained)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    size = (tmp_path / "model" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # dtype "auto": the config's
    assert reloaded.dtype == torch.bfloat16
    assert all(torch.equal(v, trained[k].to(torch.bfloat16)) for k, v in reloaded.state_dict().items())
    # Training went on in fp32: the trained weights differ from their bf16 rounding, the export does not
    # claim more precision than it has.
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in trained.values())


def test_lora_exports_bf16_merged_and_fp32_adapter(tiny_model_dir, tiny_tokenizer, tmp_path):
    from srt.training.export import merged_lora_state_dict

    module, watch = sft(tiny_model_dir, tiny_tokenizer, lora=LORA), Watch()
    fit(module, datamodule(tiny_tokenizer, "sft"), watch)
    module.save_hf(tmp_path / "adapter")
    module.save_hf(tmp_path / "merged", merge_lora=True)
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter and {v.dtype for v in adapter.values()} == {torch.float32}
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert {v.dtype for v in merged.values()} == {torch.bfloat16}
    expected = merged_lora_state_dict(module.model)
    assert all(torch.equal(merged[k], v.to(torch.bfloat16)) for k, v in expected.items())
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"


def test_fp32_loaded_model_exports_fp32(tiny_model, tiny_tokenizer, tmp_path):
    module = SFTModule(tiny_model, tiny_tokenizer)
    module.configure_model()
    assert module.load_dtype == torch.float32
    module.save_hf(tmp_path / "model")
    assert {v.dtype for v in load_file(tmp_path / "model" / "model.safetensors").values()} == {torch.float32}
    module.save_hf(tmp_path / "half", dtype="bfloat16")  # an explicit export dtype wins
    assert {v.dtype for v in load_file(tmp_path / "half" / "model.safetensors").values()} == {torch.bfloat16}
    with pytest.raises(ConfigError, match="export dtype"):
        module.save_hf(tmp_path / "bad", dtype="int8")


def test_cast_keeps_tied_weights_tied(tiny_model_dir, tmp_path):
    """A tied LM head (SmolLM2 has one) stays one tensor after the cast, so save_pretrained writes it once."""
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    cast = cast_state_dict(model.state_dict(), torch.bfloat16)
    assert cast["lm_head.weight"] is cast["model.embed_tokens.weight"]
    save_hf(model, tmp_path / "tied", dtype=torch.bfloat16)
    assert "lm_head.weight" not in load_file(tmp_path / "tied" / "model.safetensors")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tied")
    assert reloaded.dtype == torch.bfloat16 and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight.detach().to(torch.bfloat16))
