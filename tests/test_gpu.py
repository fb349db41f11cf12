"""GPU-only tests: sharded training on one device (FSDP1 and FSDP2), LoRA adapter export under both,
bf16-mixed training (SFT and DPO's step-0 reference check), attention kernels on packed rows, and
generation on the device.

They run on a CUDA machine (``benchmarks/gpu/run.sh`` runs this file there) and are skipped
elsewhere, except that ``SRT_GPU_DRY=1`` (``benchmarks/gpu/run.sh --dry``, what CI runs) runs them on the
CPU, FSDP1 included (Lightning's FSDPStrategy refuses the CPU; see the ``fsdp1_anywhere`` fixture). Every
comparison is against a plain single-device run on the same device, so the tolerances are those of
the kernels, not of CPU vs GPU arithmetic.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from _dist_helpers import LORA, LossRecorder, equal_count_records, read_losses, seeded_sft_module
from safetensors.torch import load_file

CUDA = torch.cuda.is_available()
DRY = os.environ.get("SRT_GPU_DRY") == "1"
DEVICE = "cuda" if CUDA else "cpu"
ACCELERATOR = "gpu" if CUDA else "cpu"

pytestmark = pytest.mark.skipif(
    not (CUDA or DRY),
    reason="GPU-only tests: need CUDA (SRT_GPU_DRY=1 runs the CPU-capable ones, as benchmarks/gpu/run.sh --dry does)",
)


@pytest.fixture()
def fsdp1_anywhere(monkeypatch):
    """FSDP1 on a GPU as is; on the CPU (the dry run) through a subclass of Lightning's FSDPStrategy,
    which refuses exactly its own class there, and FSDP units placed on the CPU. The FSDP code that
    runs is torch's and Lightning's own, so the CPU run catches FSDP1 bugs before a GPU is available
    (it found three: gradient clipping, adapter export, merged export)."""
    if CUDA:
        return
    import lightning.pytorch.strategies as strategies
    import torch.distributed.fsdp as fsdp

    import srt.training.distributed

    class CPUFSDPStrategy(strategies.FSDPStrategy):
        pass

    monkeypatch.setattr(srt.training.distributed, "FSDPStrategy", CPUFSDPStrategy)
    init = fsdp.FullyShardedDataParallel.__init__

    def on_cpu(self, *args, **kwargs):
        kwargs["device_id"] = kwargs.get("device_id") or torch.device("cpu")
        init(self, *args, **kwargs)

    monkeypatch.setattr(fsdp.FullyShardedDataParallel, "__init__", on_cpu)


fsdp1_test = pytest.mark.usefixtures("fsdp1_anywhere")
# Plain fp32 matmuls on the GPU, so fp32 runs compare tightly (TF32 would move losses by ~1e-3).
if CUDA:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def records(tiny_tokenizer):
    return equal_count_records(tiny_tokenizer)


def fit(
    model_dir,
    tokenizer,
    records,
    out_dir: Path,
    *,
    strategy="auto",
    precision="32-true",
    lora=None,
    steps=3,
    clip: float | None = 0.5,
    callbacks=(),
):
    """A few SFT steps on DEVICE (seeded policy; gradient clipping at 0.5 is active: it clips here); records
    losses, exports to out_dir/model (and out_dir/merged with LoRA)."""
    import lightning as L

    from srt.config import SFTConfig
    from srt.data import SFTDataModule

    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule = SFTDataModule(
        tokenizer,
        SFTConfig(micro_batch_size=4, max_length=512, group_by_length=False),
        train_records=records,
        seed=7,
    )
    module = seeded_sft_module(model_dir, tokenizer, lora=lora, lr=1e-2)
    trainer = L.Trainer(
        accelerator=ACCELERATOR,
        devices=1,
        strategy=strategy,
        precision=precision,
        max_steps=steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LossRecorder(out_dir), *callbacks],
    )
    trainer.fit(module, datamodule=datamodule)
    module.save_hf(out_dir / "model")
    if lora is not None:
        module.save_hf(out_dir / "merged", merge_lora=True)
    return module


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_config.json").exists() else "model.safetensors"
    return load_file(folder / name)


def assert_close_tensors(a: dict, b: dict, atol: float) -> None:
    assert sorted(a) == sorted(b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max abs difference {worst}"


class PlainRuns(dict):
    """Single-device fp32 reference runs on DEVICE, made on first use: ``plain["full"]``, ``plain["lora"]``
    (gradient clipping 0.5), ``plain["full-noclip"]``, ``plain["lora-noclip"]`` (none)."""

    def __init__(self, model_dir, tokenizer, records, out: Path):
        super().__init__()
        self.args, self.out = (model_dir, tokenizer, records), out

    def __missing__(self, name: str) -> Path:
        kind, _, noclip = name.partition("-")
        fit(*self.args, self.out / name, lora=LORA if kind == "lora" else None, clip=None if noclip else 0.5)
        self[name] = self.out / name
        return self[name]


@pytest.fixture(scope="module")
def plain(tiny_model_dir, tiny_tokenizer, records, tmp_path_factory):
    return PlainRuns(tiny_model_dir, tiny_tokenizer, records, tmp_path_factory.mktemp("plain"))


class Inspect:
    """Lightning callback: what the policy looks like during training (parameter types, compute dtype)."""

    def __new__(cls):
        import lightning as L

        class _Inspect(L.Callback):
            def __init__(self):
                self.param_types, self.param_dtypes, self.activation_dtypes = set(), set(), set()
                self.fsdp1_units = 0

            def on_train_start(self, trainer, module):
                self.param_types = {type(p).__name__ for p in module.model.parameters()}
                self.param_dtypes = {p.dtype for p in module.model.parameters() if p.requires_grad}
                self.fsdp1_units = sum(
                    type(m).__name__ == "FullyShardedDataParallel" for m in trainer.strategy.model.modules()
                )
                unwrapped = {
                    n.replace("._fsdp_wrapped_module", "").replace("._checkpoint_wrapped_module", ""): m
                    for n, m in module.model.named_modules()
                }
                q_proj = next(m for n, m in unwrapped.items() if n.endswith("layers.0.self_attn.q_proj"))
                q_proj.register_forward_hook(lambda mod, args, out: self.activation_dtypes.add(out.dtype))

        return _Inspect()


def check_lora_export(run: Path, reference: Path, atol: float) -> None:
    adapter = weights(run / "model")
    assert adapter and all("lora_" in k for k in adapter), sorted(adapter)[:5]  # adapter only
    assert sum(v.abs().sum().item() for k, v in adapter.items() if "lora_B" in k) > 0  # it trained
    assert_close_tensors(adapter, weights(reference / "model"), atol)
    assert_close_tensors(weights(run / "merged"), weights(reference / "merged"), atol)


# --------------------------------------------------------------------------------------------- bf16-mixed


def test_bf16_mixed_sft_computes_in_bf16_and_tracks_fp32(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    inspect = Inspect()
    fit(tiny_model_dir, tiny_tokenizer, records, tmp_path, precision="bf16-mixed", callbacks=[inspect])
    assert inspect.activation_dtypes == {torch.bfloat16}  # autocast really ran the projections in bf16
    assert inspect.param_dtypes == {torch.float32}  # over fp32 master weights
    fp32, bf16 = read_losses(plain["full"]), read_losses(tmp_path)
    assert all(math.isfinite(x) for x in bf16)
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)  # same weights, same batch: bf16 rounding only
    assert bf16 != fp32  # and not silently fp32
    assert bf16 == pytest.approx(fp32, rel=1e-1)
    trained, start = weights(tmp_path / "model"), load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-3


def _dpo_setup(tiny_model_dir, tiny_tokenizer, records, shift: float = 0.0):
    from transformers import AutoModelForCausalLM

    from srt.config import DPOConfig
    from srt.data import DPODataModule
    from srt.records import PreferencePair
    from srt.training.reference import compute_reference_logps

    pairs = [
        PreferencePair(id=f"p{i}", prompt=r.instruction, chosen=r.refinement, rejected=r.response)
        for i, r in enumerate(records)
    ]
    datamodule = DPODataModule(
        tiny_tokenizer,
        DPOConfig(micro_batch_size=4, max_length=512, group_by_length=False),
        train_records=pairs,
        seed=7,
    )
    datamodule.setup("fit")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to(DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):  # the reference under the training's autocast
        reference = compute_reference_logps(model, datamodule.predict_dataloader())
    tokens = {
        ex["id"]: (int((ex["chosen_labels"] != -100).sum()), int((ex["rejected_labels"] != -100).sum()))
        for ex in (datamodule.datasets["train"][i] for i in range(len(datamodule.datasets["train"])))
    }
    # shift: a wrong reference, off by `shift` nats per labelled token on the chosen side
    datamodule.set_reference_logps({k: (c + shift * tokens[k][0], r) for k, (c, r) in reference.items()})
    return model, datamodule


def test_bf16_mixed_dpo_precomputed_reference_passes_the_step0_check(tiny_model_dir, tiny_tokenizer, records, tmp_path):
    import lightning as L

    from srt.config import DPOConfig, OptimConfig
    from srt.training.dpo import DPOModule

    model, datamodule = _dpo_setup(tiny_model_dir, tiny_tokenizer, records)
    module = DPOModule(model, tiny_tokenizer, config=DPOConfig(beta=0.1, optim=OptimConfig(lr=1e-4)))
    losses = LossRecorder(tmp_path)
    trainer = L.Trainer(
        accelerator=ACCELERATOR,
        devices=1,
        precision="bf16-mixed",
        max_steps=2,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(module, datamodule=datamodule)  # raises ConfigError if the step-0 check fails
    assert module._reference_checked
    assert losses.losses[0] == pytest.approx(math.log(2), abs=1e-2)  # policy == reference at step 0


def test_bf16_mixed_dpo_step0_check_still_catches_a_wrong_reference(tiny_model_dir, tiny_tokenizer, records):
    import lightning as L

    from srt.config import DPOConfig, OptimConfig
    from srt.errors import ConfigError
    from srt.training.dpo import DPOModule

    model, datamodule = _dpo_setup(tiny_model_dir, tiny_tokenizer, records, shift=0.25)  # 5x the bf16 tolerance
    module = DPOModule(model, tiny_tokenizer, config=DPOConfig(beta=0.1, optim=OptimConfig(lr=1e-4)))
    trainer = L.Trainer(
        accelerator=ACCELERATOR,
        devices=1,
        precision="bf16-mixed",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ConfigError, match="reference check at step 0"):
        trainer.fit(module, datamodule=datamodule)


# --------------------------------------------------------------------------------------------- attention kernels


def _flash_available() -> bool:
    try:
        from transformers.utils import is_flash_attn_2_available

        return CUDA and is_flash_attn_2_available()
    except ImportError:
        return False


@pytest.mark.parametrize(
    "attn",
    [
        "sdpa",
        "eager",
        pytest.param(
            "flash_attention_2", marks=pytest.mark.skipif(not _flash_available(), reason="flash_attn not installed")
        ),
    ],
)
def test_packed_rows_score_like_padded_batches(attn, tiny_model_dir, tiny_tokenizer, records):
    """DPO log-probs of every sequence from packed rows (position_ids, no mask; one flattened row under
    flash-attention) equal those from padded batches, with this attention kernel on the device."""
    from transformers import AutoModelForCausalLM

    from srt.config import DPOConfig
    from srt.data import DPODataModule
    from srt.records import PreferencePair
    from srt.training.dpo_objective import concatenated_forward

    dtype = torch.bfloat16 if attn == "flash_attention_2" else torch.float32  # flash-attention is half precision only
    model = (
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation=attn).to(DEVICE).eval()
    )
    pairs = [
        PreferencePair(id=f"p{i}", prompt=r.instruction, chosen=r.refinement, rejected=r.response * (1 + i % 3))
        for i, r in enumerate(records)
    ]  # unequal lengths: real padding in the padded batches
    out = {}
    for packing in (False, True):
        dm = DPODataModule(
            tiny_tokenizer, DPOConfig(micro_batch_size=4, max_length=512, packing=packing), train_records=pairs
        )
        scores = {}
        with torch.no_grad():
            for batch in dm.predict_dataloader():
                batch = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                res = concatenated_forward(model, batch)
                for i, pid in enumerate(batch["ids"]):  # mean log-prob per labelled token
                    scores[pid] = tuple(
                        (res[f"{side}_logps"][i] / res[f"{side}_tokens"][i]).item() for side in ("chosen", "rejected")
                    )
        out[packing] = scores
    assert sorted(out[False]) == sorted(out[True]) == sorted(p.id for p in pairs)
    # Measured on CPU: equal to ~1e-5 per token (fp32 and bf16); packed rows whose position_ids do not restart
    # (examples attending to each other) differ by 2.4e-2 per token on this model.
    tol = 5e-3 if dtype == torch.bfloat16 else 1e-4
    worst = max(abs(a - b) for k in out[False] for a, b in zip(out[False][k], out[True][k]))
    assert worst <= tol, f"packed vs padded log-probs differ by {worst} per token"
    assert all(-20 < v < 0 for scores in out.values() for pair in scores.values() for v in pair)


# --------------------------------------------------------------------------------------------- FSDP1 (one GPU)
# Lightning's FSDPPrecision refuses gradient clipping by norm (Trainer gradient_clip_val), which srt's pipeline
# sets by default (trainer.gradient_clip_val: 1.0): the first test checks that path; the others train without
# clipping (against plain runs without it) so that sharding and export are checked whatever that one says.


@fsdp1_test
def test_fsdp1_trains_with_gradient_clipping_like_plain(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    from srt.training.distributed import fsdp_strategy

    fit(
        tiny_model_dir,
        tiny_tokenizer,
        records,
        tmp_path,
        strategy=fsdp_strategy({"wrap_layers": ["LlamaDecoderLayer"]}),
    )
    assert read_losses(tmp_path) == pytest.approx(read_losses(plain["full"]), rel=1e-4)
    assert_close_tensors(weights(tmp_path / "model"), weights(plain["full"] / "model"), atol=1e-4)


@fsdp1_test
def test_fsdp1_one_gpu_full_finetune_matches_plain_and_exports(
    tiny_model_dir, tiny_tokenizer, records, plain, tmp_path
):
    from transformers import AutoModelForCausalLM

    from srt.training.distributed import fsdp_strategy

    inspect = Inspect()
    fit(
        tiny_model_dir,
        tiny_tokenizer,
        records,
        tmp_path,
        strategy=fsdp_strategy({"wrap_layers": ["LlamaDecoderLayer"]}),
        clip=None,
        callbacks=[inspect],
    )
    num_layers = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.num_hidden_layers
    assert inspect.fsdp1_units == num_layers + 1  # each decoder layer + the root (the LightningModule)
    assert read_losses(tmp_path) == pytest.approx(read_losses(plain["full-noclip"]), rel=1e-4)
    assert_close_tensors(weights(tmp_path / "model"), weights(plain["full-noclip"] / "model"), atol=1e-4)
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # a plain HF folder


@fsdp1_test
def test_fsdp1_one_gpu_lora_adapter_export_matches_plain(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    from srt.training.distributed import fsdp_strategy

    fit(
        tiny_model_dir,
        tiny_tokenizer,
        records,
        tmp_path,
        lora=LORA,
        clip=None,
        strategy=fsdp_strategy({"wrap_layers": ["LlamaDecoderLayer"]}),
    )
    assert read_losses(tmp_path) == pytest.approx(read_losses(plain["lora-noclip"]), rel=1e-4)
    check_lora_export(tmp_path, plain["lora-noclip"], atol=1e-4)


@fsdp1_test
def test_fsdp1_bf16_mixed_precision_trains_close_to_fp32(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    from srt.training.distributed import fsdp_strategy

    fit(
        tiny_model_dir,
        tiny_tokenizer,
        records,
        tmp_path,
        clip=None,
        strategy=fsdp_strategy({"wrap_layers": ["LlamaDecoderLayer"], "precision": "bf16"}),
    )
    fp32, bf16 = read_losses(plain["full-noclip"]), read_losses(tmp_path)
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=1e-1)
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)


# --------------------------------------------------------------------------------------------- FSDP2 (one device)


def test_fsdp2_one_device_full_finetune_matches_plain_and_exports(
    tiny_model_dir, tiny_tokenizer, records, plain, tmp_path
):
    from srt.training.distributed import fsdp2_strategy

    inspect = Inspect()
    fit(tiny_model_dir, tiny_tokenizer, records, tmp_path, strategy=fsdp2_strategy({}), callbacks=[inspect])
    assert inspect.param_types == {"DTensor"}  # fully_shard ran (one shard: the whole tensor)
    assert read_losses(tmp_path) == pytest.approx(read_losses(plain["full"]), rel=1e-4)
    assert_close_tensors(weights(tmp_path / "model"), weights(plain["full"] / "model"), atol=1e-4)


def test_fsdp2_one_device_lora_adapter_export_matches_plain(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    from srt.training.distributed import fsdp2_strategy

    fit(tiny_model_dir, tiny_tokenizer, records, tmp_path, lora=LORA, strategy=fsdp2_strategy({}))
    assert read_losses(tmp_path) == pytest.approx(read_losses(plain["lora"]), rel=1e-4)
    check_lora_export(tmp_path, plain["lora"], atol=1e-4)


def test_fsdp2_bf16_mixed_precision_policy_computes_in_bf16(tiny_model_dir, tiny_tokenizer, records, plain, tmp_path):
    from srt.training.distributed import fsdp2_strategy

    inspect = Inspect()
    fit(
        tiny_model_dir,
        tiny_tokenizer,
        records,
        tmp_path,
        strategy=fsdp2_strategy({"precision": "bf16"}),
        callbacks=[inspect],
    )
    assert inspect.activation_dtypes == {torch.bfloat16}
    fp32, bf16 = read_losses(plain["full"]), read_losses(tmp_path)
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=1e-1)
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)


# --------------------------------------------------------------------------------------------- generation


def test_generator_on_device_batched_greedy_equals_one_by_one(tiny_model, tiny_tokenizer):
    from srt.generation import Generator, SamplingConfig

    model = tiny_model.to(DEVICE)
    with torch.no_grad():  # sharpen the random model so greedy choices are far from ties (kernel rounding)
        model.lm_head.weight.mul_(50)
    prompts = [
        "Write one line about rivers.",
        "Hi",
        "Explain why the sky looks blue in one long sentence, please.",
        "2 + 2 = ?",
    ]
    sampling = SamplingConfig(max_new_tokens=12)
    one = [Generator(model, tiny_tokenizer, batch_size=1).chat([p], sampling)[0] for p in prompts]
    batched = Generator(model, tiny_tokenizer, batch_size=4).chat(prompts, sampling)
    assert [o.text for o in batched] == [o.text for o in one]
    assert all(o.num_new_tokens <= 12 for o in batched) and sum(o.num_new_tokens for o in batched) > 0
    assert next(model.parameters()).device.type == DEVICE
