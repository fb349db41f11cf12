"""srt.training.export.save_hf on a model sharded with FSDP2 (fully_shard, 2 CPU ranks over gloo).

The gather is a collective; rank 0 alone writes. Full weights, the LoRA adapter and the merged LoRA
weights must all reload to the logits the unsharded model had.
"""

import os
import socket

import torch
import torch.multiprocessing as mp

IDS = torch.tensor([[1, 7, 30, 55, 91, 12, 4]])
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


def _model(lora: bool):
    from srt.tiny import build_tiny_model, build_tiny_tokenizer
    from srt.training.policy import apply_lora

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    if lora:
        torch.manual_seed(0)  # the same LoRA init on every rank
        model = apply_lora(model, LORA)
        with torch.no_grad():  # a trained (non-zero) adapter, so that merging matters
            gen = torch.Generator().manual_seed(1)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model, tokenizer


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from srt.training.export import save_hf

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        for lora in (False, True):
            model, tokenizer = _model(lora)
            for layer in model.get_decoder().layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            if lora:
                save_hf(model, f"{out}/adapter", tokenizer, is_global_zero=rank == 0)
                save_hf(model, f"{out}/merged", tokenizer, merge_lora=True, is_global_zero=rank == 0)
            else:
                save_hf(model, f"{out}/full", tokenizer, is_global_zero=rank == 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def test_sharded_export_full_adapter_and_merged(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from srt.tiny import build_tiny_model, build_tiny_tokenizer

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "full", "merged"]  # no temporary leftovers

    full_expected = _model(False)[0](input_ids=IDS).logits
    lora_expected = _model(True)[0](input_ids=IDS).logits
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    assert torch.allclose(full(input_ids=IDS).logits, full_expected, atol=1e-5)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(merged(input_ids=IDS).logits, lora_expected, atol=1e-5)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    adapter = PeftModel.from_pretrained(build_tiny_model(build_tiny_tokenizer()), tmp_path / "adapter").eval()
    assert torch.allclose(adapter(input_ids=IDS).logits, lora_expected, atol=1e-5)
    assert not torch.allclose(lora_expected, full_expected, atol=1e-3)  # the adapter changes the output
