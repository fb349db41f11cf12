"""Training, in one place: the policy both stages train, the SFT and DPO modules, the DPO objective,
reference log-probs, export and sharding.

Both modules take the run config's sections as the only source of their settings::

    SFTModule(base_model, tokenizer, config=cfg.sft, model_config=cfg.model)
    DPOModule(start_model, tokenizer, config=cfg.dpo, model_config=cfg.model)

=================  ==================================================================================
``policy``         :class:`PolicyModule`, the Lightning base: building the policy (full or LoRA), fp32
                   master weights, gradient checkpointing, AdamW + cosine warmup, gradient clipping
                   (FSDP1 too), precision checks, HF export; logits only at labelled positions
``sft``            :class:`SFTModule`: the masked next-token loss
``dpo``            :class:`DPOModule`: the reference (precomputed, frozen copy, adapter disabled), the
                   step-0 reference check, the Lightning hooks
``dpo_objective``  the one DPO objective: sequence log-probs of padded and packed batches,
                   ``dpo_loss`` (sigmoid / IPO / hinge, papers cited), the NLL term, TRL's metric names
``reference``      precomputed reference log-probs: :func:`precompute_reference_logps` (own, larger,
                   length-sorted batches), :func:`compute_reference_logps`, the on-disk
                   :class:`ReferenceLogpsCache`
``export``         the Hugging Face folder (adapter, merged or full weights), gathered under FSDP
``distributed``    the FSDP1 / FSDP2 strategies from ``trainer.fsdp``
=================  ==================================================================================
"""

from srt.training.dpo import DPOModule
from srt.training.dpo_objective import LOSS_TYPES, METRICS, DPOObjective, concatenated_forward, dpo_loss
from srt.training.policy import PolicyModule, accumulation_for_global_batch, check_training_precision
from srt.training.reference import ReferenceLogpsCache, compute_reference_logps, precompute_reference_logps
from srt.training.sft import SFTModule

__all__ = [
    "LOSS_TYPES",
    "METRICS",
    "DPOModule",
    "DPOObjective",
    "PolicyModule",
    "ReferenceLogpsCache",
    "SFTModule",
    "accumulation_for_global_batch",
    "check_training_precision",
    "compute_reference_logps",
    "concatenated_forward",
    "dpo_loss",
    "precompute_reference_logps",
]
