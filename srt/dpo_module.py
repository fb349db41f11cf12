"""Stage 2: DPO on self-feedback pairs (chosen = refinement, rejected = initial response).

The reference model is explicit (``reference=``), because getting it wrong is silent:

- ``precomputed``: reference log-probs are computed once (:func:`compute_reference_logps`, cached on
  disk by :class:`ReferenceLogpsCache`) and carried by the batches; training holds one model.
- ``frozen_copy``: a frozen deep copy of the starting weights (eval mode, no grad): twice the memory.
- ``adapter_disabled``: LoRA only; the reference is the policy with its adapter switched off. That is
  the starting model only when the LoRA base *is* the stage-1 model (stage-1 adapter merged first), so
  it needs ``reference_is_base=True``.

The step-0 check (``check_reference_at_start``) catches the rest: before the first update the policy
equals the reference, so the log-probs must agree and the sigmoid loss is ln 2. If not, training
stops with a ConfigError that says which reference is wrong.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from srt.errors import ConfigError
from srt.losses import IGNORE_INDEX, LOSS_TYPES, dpo_loss
from srt.sft_module import CausalLMModule, is_peft_model, scored_logits

REFERENCES = ("precomputed", "frozen_copy", "adapter_disabled")

_ADAPTER_PITFALL = (
    "reference='adapter_disabled' uses the LoRA base model as the reference, which is right only when "
    "that base IS the stage-1 model (stage-1 weights merged before DPO). Continuing DPO from a stage-1 "
    "LoRA adapter, the disabled-adapter model is the pre-SFT base, not the stage-1 model. Merge the "
    "stage-1 adapter first (export with merge_lora=True) and set reference_is_base: true, or use "
    "reference 'precomputed' or 'frozen_copy'"
)


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def concatenated_forward(model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One forward pass over chosen and rejected (padded to one length, stacked on the batch axis).

    Returns summed log-probs and labelled-token counts per side. Right padding with attention
    mask 0 and label -100 cannot change the real tokens' outputs (causal attention).
    Packed batches (``srt.data.PackedDPOCollator``) go through :func:`packed_forward`.
    """
    if "sequence_ids" in batch:
        return packed_forward(model, batch)
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    sides = ("chosen", "rejected")
    input_ids = torch.cat([_pad_to(batch[f"{s}_input_ids"], width, 0) for s in sides])
    attention_mask = torch.cat([_pad_to(batch[f"{s}_attention_mask"], width, 0) for s in sides])
    labels = torch.cat([_pad_to(batch[f"{s}_labels"], width, IGNORE_INDEX) for s in sides])
    row_of_token = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
    return _sequence_logps(
        model, input_ids, labels, row_of_token, input_ids.shape[0] // 2, attention_mask=attention_mask
    )


def packed_forward(model, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`concatenated_forward` for packed rows: one forward over the rows (position_ids, no
    attention mask: no attention across sequences), then each token's log-prob is summed into its
    sequence (``sequence_ids``: chosen 0..B-1, rejected B..2B-1)."""
    return _sequence_logps(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["sequence_ids"],
        len(batch["ids"]),
        position_ids=batch["position_ids"],
    )


def _sequence_logps(
    model, input_ids, labels, sequence_of_token, n: int, chunk: int = 1024, **inputs
) -> dict[str, torch.Tensor]:
    """Summed log-probs and labelled-token counts of 2n sequences (chosen 0..n-1, rejected n..2n-1);
    ``sequence_of_token`` [R, T] says which sequence each token belongs to. Logits exist only at
    scored positions (:func:`srt.sft_module.scored_logits`), upcast to float32 ``chunk`` rows at a time."""
    logits, scored_labels, scored = scored_logits(model, input_ids, labels, **inputs)
    sequence = sequence_of_token[:, 1:][scored]  # label t+1 is scored at t
    token_logps = [logits.new_zeros(0, dtype=torch.float32)]
    for part, part_labels in zip(logits.split(chunk), scored_labels.split(chunk)):
        part = part.float()  # no-op for float32; bf16 is upcast one chunk at a time
        token_logps.append(part.gather(-1, part_labels[:, None]).squeeze(-1) - part.logsumexp(dim=-1))
    token_logps = torch.cat(token_logps)
    sums = torch.zeros(2 * n, dtype=torch.float32, device=logits.device).index_add(0, sequence, token_logps)
    counts = torch.zeros(2 * n, dtype=torch.long, device=logits.device).index_add(
        0, sequence, torch.ones_like(sequence)
    )
    return {
        "chosen_logps": sums[:n],
        "rejected_logps": sums[n:],
        "chosen_tokens": counts[:n],
        "rejected_tokens": counts[n:],
    }


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def compute_reference_logps(model, dataloader, desc: str = "reference log-probs") -> dict[str, tuple[float, float]]:
    """``{pair_id: (sum logp chosen, sum logp rejected)}`` for every pair of ``dataloader`` (DPO
    batches with ``ids``), with ``model`` in eval mode (no dropout) and no grad."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, tuple[float, float]] = {}
    try:
        for batch in tqdm(dataloader, desc=desc):
            if "ids" not in batch:
                raise ConfigError("reference log-probs need DPO batches that carry pair 'ids'")
            result = concatenated_forward(model, _to_device(batch, device))
            for pair_id, c, r in zip(batch["ids"], result["chosen_logps"].tolist(), result["rejected_logps"].tolist()):
                out[str(pair_id)] = (c, r)
    finally:
        model.train(was_training)
    return out


class ReferenceLogpsCache:
    """Reference log-probs on disk, one ``<key>.pt`` per (data, model, template, max_length, dtype).

    The file holds ``{"key_fields", "ids", "ref_chosen_logps", "ref_rejected_logps"}`` (the columnar
    form ``srt.data.load_reference_logps`` reads) and is written to a temporary file then renamed.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)

    @staticmethod
    def key_fields(
        *,
        data_hash: str,
        model: str,
        chat_template: str | None,
        max_length: int,
        dtype: str,
        data_config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # data_config: how pairs became token ids (truncation, system prompt, completion end...)
        return {
            "data_hash": data_hash,
            "model": str(model),
            "chat_template": chat_template or "",
            "max_length": int(max_length),
            "dtype": str(dtype),
            "data_config": data_config or {},
        }

    @classmethod
    def key(cls, **fields) -> str:
        blob = json.dumps(cls.key_fields(**fields), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, key: str) -> Path:
        return self.cache_dir / f"ref-logps-{key}.pt"

    def load(self, key: str) -> dict[str, tuple[float, float]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        chosen, rejected = blob["ref_chosen_logps"].tolist(), blob["ref_rejected_logps"].tolist()
        return {i: (c, r) for i, c, r in zip(blob["ids"], chosen, rejected)}

    def save(self, key: str, logps: Mapping[str, tuple[float, float]], key_fields: dict | None = None) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ids = list(logps)
        blob = {
            "key_fields": key_fields or {},
            "ids": ids,
            "ref_chosen_logps": torch.tensor([logps[i][0] for i in ids], dtype=torch.float64),
            "ref_rejected_logps": torch.tensor([logps[i][1] for i in ids], dtype=torch.float64),
        }
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

    def get_or_compute(
        self, compute: Callable[[], Mapping[str, tuple[float, float]]], **fields
    ) -> dict[str, tuple[float, float]]:
        """Load the entry for ``fields`` (see :meth:`key_fields`), or compute, save and return it."""
        key = self.key(**fields)
        cached = self.load(key)
        if cached is not None:
            return cached
        logps = dict(compute())
        self.save(key, logps, self.key_fields(**fields))
        return logps


class DPOModule(CausalLMModule):
    """DPO (sigmoid / IPO / hinge) with an explicit reference and a step-0 reference check.

    Logs TRL's names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` (summed log-probs), ``nll/chosen``
    (token-mean NLL of chosen), plus ``train/loss``, ``train/lr``, ``train/pairs_per_s`` (this device)
    and the same pair metrics under ``val/`` in validation.

    For ``loss_type="ipo"`` the loss uses length-averaged log-probs (as TRL does); rewards and
    logged log-probs stay summed.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        beta: float = 0.01,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        nll_weight: float = 0.0,
        reference: str = "precomputed",
        reference_is_base: bool = False,
        check_reference_at_start: bool = True,
        reference_check_tolerance: float | None = None,
        lr: float = 5e-7,
        **policy_kwargs,
    ):
        super().__init__(model, tokenizer, lr=lr, **policy_kwargs)
        if reference not in REFERENCES:
            raise ConfigError(f"dpo reference must be one of {REFERENCES}, got {reference!r}")
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"dpo loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if beta <= 0:
            raise ConfigError(f"dpo beta must be > 0, got {beta}")
        if reference == "adapter_disabled":
            has_adapter = self.lora is not None or (self._given_model and is_peft_model(self._given_model[0]))
            if not has_adapter:
                raise ConfigError(
                    "reference='adapter_disabled' needs a LoRA policy (set lora), or use 'frozen_copy'/'precomputed'"
                )
            if not reference_is_base:
                raise ConfigError(
                    "reference='adapter_disabled' requires reference_is_base: true (confirming the LoRA "
                    "base is the stage-1 model). " + _ADAPTER_PITFALL + "."
                )
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        self.nll_weight, self.reference = nll_weight, reference
        self.check_reference_at_start = check_reference_at_start
        self.reference_check_tolerance = reference_check_tolerance
        self.reference_model: torch.nn.Module | None = None
        self._reference_checked = False

    # -- models ---------------------------------------------------------------------------
    def on_base_model(self, model: torch.nn.Module) -> None:
        if self.reference == "frozen_copy":
            reference = copy.deepcopy(model).eval()
            reference.requires_grad_(False)
            self.reference_model = reference

    def on_train_start(self):
        super().on_train_start()
        if self.reference_model is not None:
            self.reference_model.eval()

    @torch.no_grad()
    def reference_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed reference log-probs (chosen, rejected) for ``batch``, per the configured reference."""
        if self.reference == "precomputed":
            if "ref_chosen_logps" not in batch or "ref_rejected_logps" not in batch:
                raise ConfigError(
                    "reference='precomputed' but the batch has no ref_chosen_logps/ref_rejected_logps: compute them "
                    "with srt.dpo_module.compute_reference_logps and pass them to the data module "
                    "(DPODataModule.set_reference_logps), or use reference='frozen_copy'"
                )
            return batch["ref_chosen_logps"].float(), batch["ref_rejected_logps"].float()
        if self.reference == "frozen_copy":
            result = concatenated_forward(self.reference_model, batch)
        else:
            with self.model.disable_adapter():
                result = concatenated_forward(self.model, batch)
        return result["chosen_logps"], result["rejected_logps"]

    # -- loss -----------------------------------------------------------------------------
    def compute_batch(self, batch) -> dict[str, torch.Tensor]:
        """Policy forward + loss: per-pair losses, rewards, log-probs, and the total loss."""
        policy = concatenated_forward(self.model, batch)
        ref_chosen, ref_rejected = self.reference_logps(batch)
        pc, pr = policy["chosen_logps"], policy["rejected_logps"]
        if self.loss_type == "ipo":  # IPO is defined on length-averaged log-probs
            nc, nr = policy["chosen_tokens"].clamp(min=1), policy["rejected_tokens"].clamp(min=1)
            losses, _, _ = dpo_loss(pc / nc, pr / nr, ref_chosen / nc, ref_rejected / nr, self.beta, "ipo")
            _, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, ref_chosen, ref_rejected, self.beta, "sigmoid")
        else:
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                pc, pr, ref_chosen, ref_rejected, self.beta, self.loss_type, self.label_smoothing
            )
        nll = -pc.sum() / policy["chosen_tokens"].sum().clamp(min=1)
        loss = losses.mean() + self.nll_weight * nll if self.nll_weight else losses.mean()
        return {
            "loss": loss,
            "losses": losses,
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "policy_chosen_logps": pc.detach(),
            "policy_rejected_logps": pr.detach(),
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
            "chosen_tokens": policy["chosen_tokens"],
            "rejected_tokens": policy["rejected_tokens"],
            "nll": nll.detach(),
        }

    def _log_pair_metrics(self, out: dict[str, torch.Tensor], prefix: str, **kwargs) -> None:
        c, r = out["chosen_rewards"], out["rejected_rewards"]
        metrics = {
            "rewards/chosen": c.mean(),
            "rewards/rejected": r.mean(),
            "rewards/margins": (c - r).mean(),
            "rewards/accuracies": (c > r).float().mean(),
            "logps/chosen": out["policy_chosen_logps"].mean(),
            "logps/rejected": out["policy_rejected_logps"].mean(),
            "nll/chosen": out["nll"],
        }
        self.log_dict({prefix + k: v for k, v in metrics.items()}, batch_size=c.shape[0], **kwargs)

    # -- step-0 reference check -------------------------------------------------------------
    def _tolerance(self) -> float:
        if self.reference_check_tolerance is not None:
            return self.reference_check_tolerance
        # bf16/fp16 weights or autocast ("bf16-mixed") move log-probs by ~1e-3..1e-2 per token between
        # differently shaped batches or fp32-precomputed references (measured 1.6e-2 on the tiny model);
        # a wrong reference is off by ~0.1 per token or more.
        # Trainable weights are fp32 masters even when loaded in bf16, so look at the load dtype and at
        # any half-precision weights left (frozen ones), not only at the first parameter.
        half = (torch.bfloat16, torch.float16)
        low_precision = (
            getattr(self, "load_dtype", None) in half
            or any(p.dtype in half for p in self.model.parameters())
            or (self._trainer is not None and "16" in str(self.trainer.precision))
        )
        return 5e-2 if low_precision else 1e-3  # per labelled token

    @torch.no_grad()
    def check_reference(self, batch) -> None:
        """At step 0 policy == reference: per-token |policy - ref| logp within tolerance and the
        sigmoid loss ln 2. Runs in eval mode (dropout off); raises ConfigError otherwise."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.compute_batch(batch)
        finally:
            self.model.train(was_training)
        tol = self._tolerance()
        diffs = torch.cat(
            [
                (out["policy_chosen_logps"] - out["ref_chosen_logps"]).abs() / out["chosen_tokens"].clamp(min=1),
                (out["policy_rejected_logps"] - out["ref_rejected_logps"]).abs() / out["rejected_tokens"].clamp(min=1),
            ]
        )
        worst = diffs.max().item()
        losses, c, r = dpo_loss(
            out["policy_chosen_logps"],
            out["policy_rejected_logps"],
            out["ref_chosen_logps"],
            out["ref_rejected_logps"],
            beta=self.beta,
        )
        sigmoid_loss = losses.mean().item()
        max_tokens = int(torch.cat([out["chosen_tokens"], out["rejected_tokens"]]).max())
        loss_tol = max(1e-3, self.beta * tol * max_tokens)  # what a logp gap within tolerance can move
        bad = worst > tol or abs(sigmoid_loss - math.log(2)) > loss_tol
        if self._trainer is not None:  # stop on every rank if any rank sees a mismatch
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            why = {
                "precomputed": "the precomputed reference log-probs do not come from the starting policy (a cache "
                "from another model/checkpoint, chat template, max_length or dtype?). Recompute them from the "
                "model DPO starts from",
                "frozen_copy": "the frozen reference copy differs from the policy (the policy was changed after "
                "the copy was taken?)",
                "adapter_disabled": "the model with its LoRA adapter disabled is not the starting policy. "
                + _ADAPTER_PITFALL,
            }[self.reference]
            raise ConfigError(
                f"DPO reference check at step 0 failed: policy and reference should be identical, but log-probs "
                f"differ by up to {worst:.4g} per token (tolerance {tol:g}); sigmoid loss {sigmoid_loss:.5f} vs "
                f"ln2={math.log(2):.5f}, reward margin {(c - r).mean().item():.4g}. Cause: {why}. "
                "(Disable with check_reference_at_start: false only if this is intended.)"
            )
        self._reference_checked = True

    # -- Lightning hooks --------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if self.check_reference_at_start and not self._reference_checked and self.global_step == 0:
            self.check_reference(batch)
        out = self.compute_batch(batch)
        self._step_pairs = out["losses"].shape[0]
        self.log("train/loss", out["loss"], on_step=True, on_epoch=False, prog_bar=True, batch_size=self._step_pairs)
        self._log_pair_metrics(out, "", on_step=True, on_epoch=False)
        self.log_lr()
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        self.log("train/pairs_per_s", self._step_pairs / elapsed, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        out = self.compute_batch(batch)
        self.log(
            "val/loss", out["loss"], on_epoch=True, sync_dist=True, batch_size=out["losses"].shape[0], prog_bar=True
        )
        self._log_pair_metrics(out, "val/", on_epoch=True, sync_dist=True)
        return out["loss"]

    def predict_step(self, batch, batch_idx):
        """Summed log-probs of the current policy, keyed by pair id: at the start of DPO this is
        the reference (``trainer.predict`` shards it over ranks; merge the returned lists)."""
        result = concatenated_forward(self.model, batch)
        return {
            "ids": list(batch["ids"]),
            "ref_chosen_logps": result["chosen_logps"].cpu(),
            "ref_rejected_logps": result["rejected_logps"].cpu(),
        }
