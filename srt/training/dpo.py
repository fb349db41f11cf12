"""Stage 2: DPO on self-feedback pairs (chosen = refinement, rejected = initial response).

:class:`DPOModule` is the policy (:class:`~srt.training.policy.PolicyModule`) trained with the
DPO objective (:mod:`srt.training.dpo_objective`); its settings are the run config's ``dpo``
section::

    DPOModule(start_model, tokenizer, config=cfg.dpo, model_config=cfg.model)

The reference model is explicit (``dpo.reference``), because getting it wrong is silent:

- ``precomputed``: reference log-probs are computed once (:mod:`srt.training.reference`, cached on
  disk) and carried by the batches; training holds one model.
- ``frozen_copy``: a frozen deep copy of the starting weights (eval mode, no grad): twice the memory.
- ``adapter_disabled``: LoRA only; the reference is the policy with its adapter switched off. That is
  the starting model only when the LoRA base *is* the stage-1 model (stage-1 adapter merged first), so
  it needs ``reference_is_base: true``.

The step-0 check (``check_reference_at_start``) catches the rest: before the first update the policy
equals the reference, so the log-probs must agree and the sigmoid loss is ln 2. If not, training
stops with a ConfigError that says which reference is wrong.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from srt.config import DPOConfig, ModelConfig
from srt.errors import ConfigError
from srt.training.dpo_objective import DPOObjective, concatenated_forward, dpo_loss
from srt.training.policy import PolicyModule

_ADAPTER_PITFALL = (
    "reference='adapter_disabled' uses the LoRA base model as the reference, which is right only when "
    "that base IS the stage-1 model (stage-1 weights merged before DPO). Continuing DPO from a stage-1 "
    "LoRA adapter, the disabled-adapter model is the pre-SFT base, not the stage-1 model. Merge the "
    "stage-1 adapter first (export with merge_lora=True) and set reference_is_base: true, or use "
    "reference 'precomputed' or 'frozen_copy'"
)


class DPOModule(PolicyModule):
    """DPO (sigmoid / IPO / hinge) with an explicit reference and a step-0 reference check.

    Logs TRL's names (:data:`~srt.training.dpo_objective.METRICS`): ``rewards/chosen``,
    ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``,
    ``logps/rejected`` (summed log-probs), ``nll_loss`` (token-mean NLL of chosen, TRL's name), plus
    ``train/loss``, ``train/lr``, ``train/pairs_per_s`` (this device) and the same pair metrics under
    ``val/`` in validation.

    ``reference_check_tolerance``: the step-0 check's per-token log-prob tolerance (default: 1e-3,
    or 5e-2 when anything runs in half precision).
    """

    config_schema = DPOConfig
    section = "dpo"
    config: DPOConfig

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        tokenizer=None,
        *,
        config: DPOConfig | Mapping[str, Any] | None = None,
        model_config: ModelConfig | Mapping[str, Any] | None = None,
        reference_check_tolerance: float | None = None,
    ):
        super().__init__(model, tokenizer, config=config, model_config=model_config)
        self.save_hyperparameters({"reference_check_tolerance": reference_check_tolerance})
        c = self.config
        if c.reference == "adapter_disabled":
            if not self.has_adapter:
                raise ConfigError(
                    "reference='adapter_disabled' needs a LoRA policy (set lora), or use 'frozen_copy'/'precomputed'"
                )
            if not c.reference_is_base:
                raise ConfigError(
                    "reference='adapter_disabled' requires reference_is_base: true (confirming the LoRA "
                    "base is the stage-1 model). " + _ADAPTER_PITFALL + "."
                )
        self.objective = DPOObjective(c)
        self.reference_check_tolerance = reference_check_tolerance
        self.reference_model: torch.nn.Module | None = None
        self._reference_checked = False

    # -- models ---------------------------------------------------------------------------
    def on_base_model(self, model: torch.nn.Module) -> None:
        if self.config.reference == "frozen_copy":
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
        reference = self.config.reference
        if reference == "precomputed":
            if "ref_chosen_logps" not in batch or "ref_rejected_logps" not in batch:
                raise ConfigError(
                    "reference='precomputed' but the batch has no ref_chosen_logps/ref_rejected_logps: compute them "
                    "with srt.training.reference.compute_reference_logps and pass them to the data module "
                    "(DPODataModule.set_reference_logps), or use reference='frozen_copy'"
                )
            return batch["ref_chosen_logps"].float(), batch["ref_rejected_logps"].float()
        if reference == "frozen_copy":
            result = concatenated_forward(self.reference_model, batch, self.config.lm_head_chunk_size)
        else:
            with self.model.disable_adapter():
                result = concatenated_forward(self.model, batch, self.config.lm_head_chunk_size)
        return result["chosen_logps"], result["rejected_logps"]

    # -- loss -----------------------------------------------------------------------------
    def compute_batch(self, batch) -> dict[str, torch.Tensor]:
        """Policy forward + reference + the objective: per-pair losses, rewards, log-probs, the total loss
        (see :class:`~srt.training.dpo_objective.DPOObjective`)."""
        policy = concatenated_forward(self.model, batch, self.config.lm_head_chunk_size)
        ref_chosen, ref_rejected = self.reference_logps(batch)
        return self.objective(policy, ref_chosen, ref_rejected)

    def _log_pair_metrics(self, out: dict[str, torch.Tensor], prefix: str, **kwargs) -> None:
        metrics = self.objective.metrics(out)
        self.log_dict({prefix + k: v for k, v in metrics.items()}, batch_size=out["chosen_rewards"].shape[0], **kwargs)

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
        beta = self.objective.beta
        losses, c, r = dpo_loss(
            out["policy_chosen_logps"],
            out["policy_rejected_logps"],
            out["ref_chosen_logps"],
            out["ref_rejected_logps"],
            beta=beta,
        )
        sigmoid_loss = losses.mean().item()
        max_tokens = int(torch.cat([out["chosen_tokens"], out["rejected_tokens"]]).max())
        loss_tol = max(1e-3, beta * tol * max_tokens)  # what a logp gap within tolerance can move
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
            }[self.config.reference]
            raise ConfigError(
                f"DPO reference check at step 0 failed: policy and reference should be identical, but log-probs "
                f"differ by up to {worst:.4g} per token (tolerance {tol:g}); sigmoid loss {sigmoid_loss:.5f} vs "
                f"ln2={math.log(2):.5f}, reward margin {(c - r).mean().item():.4g}. Cause: {why}. "
                "(Disable with check_reference_at_start: false only if this is intended.)"
            )
        self._reference_checked = True

    # -- Lightning hooks --------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        if self.config.check_reference_at_start and not self._reference_checked and self.global_step == 0:
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
        result = concatenated_forward(self.model, batch, self.config.lm_head_chunk_size)
        return {
            "ids": list(batch["ids"]),
            "ref_chosen_logps": result["chosen_logps"].cpu(),
            "ref_rejected_logps": result["rejected_logps"].cpu(),
        }
