"""Sharded / multi-process training on CPU (gloo): DDP and FSDP2 against one process, FSDP config.

The multi-process runs train the tiny Llama for 3 steps (1.5 epochs, gradient clipping active) on
records with equal trained-token counts, so the data-parallel loss equals the one-process loss over
the same global batch exactly (see tests/_dist_helpers.py); they must agree to float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_helpers import LORA, equal_count_records, read_losses, train
from safetensors.torch import load_file

from srt.config import TrainerConfig
from srt.errors import ConfigError
from srt.pipeline.training import build_strategy

HELPERS = Path(__file__).with_name("_dist_helpers.py")


@pytest.fixture(scope="module")
def records(tiny_tokenizer):
    return equal_count_records(tiny_tokenizer)


@pytest.fixture(scope="module")
def single(tiny_model_dir, tiny_tokenizer, records, tmp_path_factory):
    """One-process reference runs: {"full": dir, "lora": dir} (losses + exported model)."""
    out = tmp_path_factory.mktemp("single")
    for name, lora in (("full", None), ("lora", LORA)):
        module = train(tiny_model_dir, tiny_tokenizer, records, out / name, lora=lora)
        if lora is not None:
            module.save_hf(out / name / "merged", merge_lora=True)
    return {"full": out / "full", "lora": out / "lora"}


def assert_same_tensors(a: dict, b: dict, atol: float):
    assert sorted(a) == sorted(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max abs difference {worst}"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_config.json").exists() else "model.safetensors"
    return load_file(folder / name)


# --------------------------------------------------------------------------------------------- DDP


def test_ddp_spawn_two_processes_match_one_process(tiny_model_dir, tiny_tokenizer, records, single, tmp_path):
    strategy = build_strategy(TrainerConfig(accelerator="cpu", devices=2, strategy="ddp_spawn"))
    # Same global batch (4): 2 processes x 2 instead of 1 x 4. The workers train; the main process
    # gets rank 0's weights back and exports them (what the pipeline does after fit).
    train(tiny_model_dir, tiny_tokenizer, records, tmp_path, strategy=strategy, devices=2, micro_batch=2)

    assert len(list(tmp_path.glob("losses_rank*.json"))) == 2
    per_rank = [json.loads(p.read_text())["losses"] for p in sorted(tmp_path.glob("losses_rank*.json"))]
    assert per_rank[0] != per_rank[1]  # the ranks saw different halves of each global batch
    assert read_losses(tmp_path) == pytest.approx(read_losses(single["full"]), rel=1e-5)
    trained, start = weights(tmp_path / "model"), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-3  # it did train
    assert_same_tensors(trained, weights(single["full"] / "model"), atol=1e-4)


# --------------------------------------------------------------------------------------------- FSDP2


@pytest.fixture(scope="module")
def fsdp2_run(tiny_model_dir, records, tmp_path_factory):
    """``python tests/_dist_helpers.py fsdp2 ...``: Lightning launches rank 1 itself, as under srt-train."""
    out = tmp_path_factory.mktemp("fsdp2")
    records_path = out / "records.jsonl"
    records_path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HELPERS.parent)}
    proc = subprocess.run(
        [sys.executable, str(HELPERS), "fsdp2", str(tiny_model_dir), str(records_path), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_fsdp2_shards_every_parameter(fsdp2_run, tiny_model):
    for name in ("full", "lora"):
        reports = [json.loads(p.read_text()) for p in sorted((fsdp2_run / name).glob("sharding_rank*.json"))]
        assert len(reports) == 2
        for report in reports:
            assert report["all_dtensor"]
            assert report["fsdp_units"] == tiny_model.config.num_hidden_layers + 1  # each layer + the root
            # Each rank holds about half of the weights.
            assert report["local_numel"] <= report["full_numel"] * 0.6


def test_fsdp2_full_finetune_matches_one_process(fsdp2_run, single):
    assert read_losses(fsdp2_run / "full") == pytest.approx(read_losses(single["full"]), rel=1e-5)
    assert_same_tensors(weights(fsdp2_run / "full" / "model"), weights(single["full"] / "model"), atol=1e-4)
    assert (fsdp2_run / "full" / "model" / "tokenizer.json").exists()


def test_fsdp2_sharded_checkpoint_resumes_exactly(fsdp2_run, single):
    ckpt = fsdp2_run / "ckpt" / "step2.ckpt"
    assert ckpt.is_dir() and len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    # Resumed at step 2, it trains step 3 only, on the data of the uninterrupted run's step 3.
    assert read_losses(fsdp2_run / "resumed") == pytest.approx(read_losses(single["full"])[2:], rel=1e-5)
    assert_same_tensors(weights(fsdp2_run / "resumed" / "model"), weights(single["full"] / "model"), atol=1e-4)


def test_fsdp2_lora_adapter_export_matches_one_process(fsdp2_run, single):
    assert read_losses(fsdp2_run / "lora") == pytest.approx(read_losses(single["lora"]), rel=1e-5)
    sharded, reference = weights(fsdp2_run / "lora" / "model"), weights(single["lora"] / "model")
    assert sharded and all("lora_" in k for k in sharded)  # adapter only, full tensors from every rank
    assert sum(v.abs().sum().item() for k, v in reference.items() if "lora_B" in k) > 0  # B moved off zero
    assert_same_tensors(sharded, reference, atol=1e-5)
    assert_same_tensors(weights(fsdp2_run / "lora" / "merged"), weights(single["lora"] / "merged"), atol=1e-5)
    assert not list((fsdp2_run / "lora").glob(".model.tmp-*"))  # written atomically, nothing left over


@pytest.fixture()
def one_process_group(tmp_path):
    """A 1-rank gloo group in this process (torn down afterwards), for in-process FSDP2 checks."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_shard_model_fsdp2_wraps_decoder_layers_and_keeps_outputs(
    one_process_group, tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path
):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from srt.training.distributed import decoder_layers, shard_model_fsdp2
    from srt.training.export import save_hf
    from srt.training.policy import apply_lora

    model = apply_lora(tiny_model, LORA)
    for name, param in model.named_parameters():  # make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    ids = tiny_tokenizer("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_hf(model, tmp_path / "plain")

    with pytest.raises(ConfigError, match="wrap_layers"):
        decoder_layers(model, ["NoSuchLayer"])
    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    assert shard_model_fsdp2(model, mesh) is model
    layers = [m for m in model.modules() if isinstance(m, FSDPModule)]
    assert sorted(type(m).__name__ for m in layers) == ["FSDPLlamaDecoderLayer"] * 2 + ["FSDPPeftModelForCausalLM"]
    assert all(isinstance(p, DTensor) for p in model.parameters())
    assert shard_model_fsdp2(model, mesh) is model  # already sharded: unchanged
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected)
    save_hf(model, tmp_path / "sharded")  # gathers the DTensors
    assert_same_tensors(weights(tmp_path / "sharded"), weights(tmp_path / "plain"), atol=0)

    # Activation checkpointing (transformers' own, so parameter names stay as they are) and bf16 compute.
    from torch.distributed.fsdp import MixedPrecisionPolicy

    other = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32"), LORA).train()
    shard_model_fsdp2(
        other,
        mesh["data_parallel"],
        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16),
        activation_checkpointing=True,
    )
    assert other.is_activation_checkpointing
    logits = other(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    grads = [p.grad for n, p in other.named_parameters() if "lora_B" in n]  # (A gets none while B is 0)
    assert grads and all(g is not None and g.to_local().abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in other.named_parameters() if "lora_" not in n)  # base stays frozen


# --------------------------------------------------------------------------------------------- FSDP (FSDP1)


def test_fsdp1_export_gathers_through_the_root_unit(one_process_group, tiny_model, tiny_tokenizer, tmp_path):
    """FSDP1 itself runs on CPU (Lightning's FSDPStrategy refuses to): wrap like the strategy does
    (the LightningModule is the root unit, decoder layers are units), take one step, export.
    One rank only (FSDP then uses NO_SHARD): this checks the gather through the root and the key
    names; a 2-process FSDP1 gather crashes on CPU (gloo), so the multi-rank case is GPU-only."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from srt.training.export import save_hf

    class Holder(torch.nn.Module):  # stands in for the LightningModule: the policy is its `model`
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids).logits

    root = FullyShardedDataParallel(
        Holder(tiny_model),
        auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    ids = tiny_tokenizer("The quick brown fox", return_tensors="pt").input_ids
    torch.optim.SGD(root.parameters(), lr=0.1).zero_grad()
    root(ids).logsumexp(-1).mean().backward()
    with pytest.raises(ConfigError, match="fsdp_root"):
        save_hf(root.module.model, tmp_path / "no-root")
    save_hf(root.module.model, tmp_path / "sharded", fsdp_root=root)
    with FullyShardedDataParallel.summon_full_params(root):
        expected = {k: v.detach().clone() for k, v in root.module.model.state_dict().items()}
    exported = weights(tmp_path / "sharded")
    assert sorted(exported) == sorted(expected)
    assert_same_tensors(exported, expected, atol=0)


def test_fsdp_strategy_from_config():
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    tcfg = TrainerConfig(
        strategy="fsdp",
        fsdp={
            "precision": "bf16",
            "activation_checkpointing": True,
            "sharding_strategy": "SHARD_GRAD_OP",
        },
    )
    strategy = build_strategy(tcfg)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert {LlamaDecoderLayer, Qwen2DecoderLayer} <= set(policy._module_classes)
    checkpointing = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert LlamaDecoderLayer in checkpointing._module_classes
    mp = strategy.mixed_precision
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16, torch.float32, None)
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["use_orig_params"] is True and strategy.kwargs["limit_all_gathers"] is True
    assert strategy.cpu_offload is None or not strategy.cpu_offload.offload_params

    # Defaults: full shard, no mixed precision or checkpointing; wrap_layers picks the classes.
    strategy = build_strategy(TrainerConfig(strategy="fsdp", fsdp={"wrap_layers": ["LlamaDecoderLayer"]}))
    assert set(strategy.kwargs["auto_wrap_policy"]._module_classes) == {LlamaDecoderLayer}
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy.mixed_precision is None
    assert strategy._activation_checkpointing_kwargs == {}


def test_fsdp_options_are_checked():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

    from srt.training.distributed import FSDP2Strategy, resolve_layer_class

    assert resolve_layer_class("Gemma3DecoderLayer") is Gemma3DecoderLayer  # gemma3, not gemma
    assert resolve_layer_class("torch.nn.TransformerDecoderLayer") is torch.nn.TransformerDecoderLayer
    with pytest.raises(ConfigError, match="NotALayer"):
        build_strategy(TrainerConfig(strategy="fsdp", fsdp={"wrap_layers": ["NotALayer"]}))
    with pytest.raises(ConfigError, match="trainer.fsdp.sharding"):
        build_strategy(TrainerConfig(strategy="fsdp", fsdp={"sharding": "FULL_SHARD"}))
    with pytest.raises(ConfigError, match="trainer.fsdp.precision"):
        build_strategy(TrainerConfig(strategy="fsdp2", fsdp={"precision": "int8"}))
    with pytest.raises(ConfigError, match="HYBRID_SHARD"):
        build_strategy(TrainerConfig(strategy="fsdp2", fsdp={"sharding_strategy": "HYBRID_SHARD"}))

    strategy = build_strategy(TrainerConfig(strategy="fsdp2", fsdp={"precision": "bf16", "state_dict_type": "full"}))
    assert isinstance(strategy, FSDP2Strategy) and strategy._save_distributed_checkpoint is False
    kwargs = strategy.shard_kwargs()
    assert kwargs["mp_policy"].param_dtype == torch.bfloat16 and kwargs["mp_policy"].reduce_dtype == torch.float32
    assert kwargs["reshard_after_forward"] is True


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="FSDP (FSDPStrategy) requires a GPU; its configuration is tested above"
)
def test_fsdp_gpu_lora_training_and_adapter_export(tiny_model_dir, tiny_tokenizer, records, single, tmp_path):
    import lightning as L
    from _dist_helpers import LossRecorder, seeded_sft_module

    from srt.config import SFTConfig
    from srt.data import SFTDataModule
    from srt.training.distributed import fsdp_strategy

    datamodule = SFTDataModule(
        tiny_tokenizer,
        SFTConfig(micro_batch_size=4, max_length=512, group_by_length=False),
        train_records=records,
        seed=7,
    )
    module = seeded_sft_module(tiny_model_dir, tiny_tokenizer, lora=LORA, lr=1e-2)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=fsdp_strategy({"wrap_layers": ["LlamaDecoderLayer"]}),
        max_steps=3,
        gradient_clip_val=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[LossRecorder(tmp_path)],
    )
    trainer.fit(module, datamodule=datamodule)
    module.save_hf(tmp_path / "model")
    # Same data, steps and seed as the CPU reference: the same adapter up to GPU float rounding.
    assert read_losses(tmp_path) == pytest.approx(read_losses(single["lora"]), rel=1e-3)
    assert_same_tensors(weights(tmp_path / "model"), weights(single["lora"] / "model"), atol=1e-3)
