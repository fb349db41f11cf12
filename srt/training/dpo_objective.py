"""The DPO objective, in one place: sequence log-probs, the loss family, the NLL term, TRL's metrics.

Training (:class:`~srt.training.dpo.DPOModule`) and the reference pass
(:mod:`srt.training.reference`) both score sequences with :func:`concatenated_forward`; the loss
is :class:`DPOObjective` over those log-probs. Written out here (a few lines each) so that TRL is not
a dependency; the names follow TRL's ``DPOTrainer`` (``loss_type``, ``beta``, ``label_smoothing``,
the logged ``rewards/*``, ``logps/*``, ``nll_loss``), and ``tests/`` check every variant against
the textbook formula.

Losses (``h`` = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected), summed log-probs):

- ``sigmoid``: DPO, Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
  a Reward Model", NeurIPS 2023, https://arxiv.org/abs/2305.18290: ``-logsigmoid(beta * h)``. With
  ``label_smoothing`` eps, conservative DPO (Mitchell, "A note on DPO with noisy preferences and
  relationship to IPO", 2023, https://ericmitchell.ai/cdpo.pdf):
  ``-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)``.
- ``ipo``: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", AISTATS 2024, https://arxiv.org/abs/2310.12036: ``(h - 1 / (2 * beta)) ** 2`` on
  *length-averaged* log-probs (as TRL does).
- ``hinge``: the SLiC calibration loss (Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with
  Human Feedback", 2023, https://arxiv.org/abs/2305.10425), in the form RSO uses (Liu et al.,
  "Statistical Rejection Sampling Improves Preference Optimization", ICLR 2024,
  https://arxiv.org/abs/2309.06657): ``relu(1 - beta * h)``.
- ``rpo_alpha`` alpha (TRL's name) adds alpha times the token-mean NLL of the chosen completions
  (RPO: Pang et al., "Iterative Reasoning Preference Optimization", NeurIPS 2024,
  https://arxiv.org/abs/2404.19733), logged as ``nll_loss`` (TRL's metric); it counters likelihood
  displacement.

Implicit rewards are ``beta * (policy - reference)`` summed log-probs, detached. The SRT paper
(Hu et al. 2024, https://arxiv.org/abs/2406.07168) trains stage 2 with the sigmoid loss, beta 0.01.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from srt.config import DPOConfig
from srt.data.base import as_section
from srt.data.tokenization import IGNORE_INDEX
from srt.errors import ConfigError
from srt.training.policy import scored_token_logps

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
# What DPOModule logs per batch (train: these names; validation: with a "val/" prefix): TRL's names.
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
)


# -- sequence log-probs -------------------------------------------------------------------------


def _pad_to(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]), value=value)


def concatenated_forward(
    model, batch: Mapping[str, Any], lm_head_chunk_size: int | None = None
) -> dict[str, torch.Tensor]:
    """Summed log-probs and labelled-token counts of a DPO batch's chosen and rejected sequences, in
    one forward pass: ``{"chosen_logps", "rejected_logps" [B] float32, "chosen_tokens",
    "rejected_tokens" [B] long}``.

    Padded batches (``srt.data.DPOCollator``): chosen and rejected are padded to one length and
    stacked on the batch axis; right padding with attention mask 0 and label -100 cannot change the
    real tokens' outputs (causal attention). Packed batches (``srt.data.PackedDPOCollator``, they carry
    ``sequence_ids``) go through :func:`packed_forward`. ``lm_head_chunk_size``: ``dpo.lm_head_chunk_size``
    (:func:`srt.training.policy.scored_token_logps`).
    """
    if "sequence_ids" in batch:
        return packed_forward(model, batch, lm_head_chunk_size)
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    sides = ("chosen", "rejected")
    input_ids = torch.cat([_pad_to(batch[f"{s}_input_ids"], width, 0) for s in sides])
    attention_mask = torch.cat([_pad_to(batch[f"{s}_attention_mask"], width, 0) for s in sides])
    labels = torch.cat([_pad_to(batch[f"{s}_labels"], width, IGNORE_INDEX) for s in sides])
    row_of_token = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
    return _sequence_logps(
        model,
        input_ids,
        labels,
        row_of_token,
        input_ids.shape[0] // 2,
        lm_head_chunk_size,
        attention_mask=attention_mask,
    )


def packed_forward(model, batch: Mapping[str, Any], lm_head_chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`concatenated_forward` for packed rows: one forward over the rows (position_ids, no
    attention mask: no attention across sequences), then each token's log-prob is summed into its
    sequence (``sequence_ids``: chosen 0..B-1, rejected B..2B-1)."""
    return _sequence_logps(
        model,
        batch["input_ids"],
        batch["labels"],
        batch["sequence_ids"],
        len(batch["ids"]),
        lm_head_chunk_size,
        position_ids=batch["position_ids"],
    )


def _sequence_logps(
    model, input_ids, labels, sequence_of_token, n: int, lm_head_chunk_size: int | None, **inputs
) -> dict[str, torch.Tensor]:
    """Summed log-probs and labelled-token counts of 2n sequences (chosen 0..n-1, rejected n..2n-1);
    ``sequence_of_token`` [R, T] says which sequence each token belongs to. Log-probs exist only at
    scored positions (:func:`srt.training.policy.scored_token_logps`), in float32; no [B, T, V]
    float32 copy of the logits is ever built."""
    token_logps, scored = scored_token_logps(model, input_ids, labels, lm_head_chunk_size=lm_head_chunk_size, **inputs)
    sequence = sequence_of_token[:, 1:][scored]  # label t+1 is scored at t
    sums = torch.zeros(2 * n, dtype=torch.float32, device=token_logps.device).index_add(0, sequence, token_logps)
    counts = torch.zeros(2 * n, dtype=torch.long, device=token_logps.device).index_add(
        0, sequence, torch.ones_like(sequence)
    )
    return {
        "chosen_logps": sums[:n],
        "rejected_logps": sums[n:],
        "chosen_tokens": counts[:n],
        "rejected_tokens": counts[n:],
    }


# -- losses -------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.01,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards (TRL ``DPOTrainer.dpo_loss`` conventions; the
    formulas and papers are in the module docstring). For ``ipo`` pass length-averaged log-probs
    (sum / tokens) for all four inputs (:class:`DPOObjective` does). Returns (losses [B],
    chosen_rewards [B], rejected_rewards [B]); rewards are ``beta * (policy - reference)``, detached.
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"dpo loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ConfigError(f"dpo beta must be > 0, got {beta}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1 - beta * logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


class DPOObjective:
    """The training objective from the ``dpo`` section (``beta``, ``loss_type``, ``label_smoothing``,
    ``rpo_alpha``): ``loss = mean(dpo_loss) + rpo_alpha * NLL(chosen)``.

    ``objective(policy, ref_chosen_logps, ref_rejected_logps)`` takes the policy's
    :func:`concatenated_forward` result and the reference's summed log-probs, and returns ``loss``,
    the per-pair ``losses``, ``chosen_rewards`` / ``rejected_rewards``, the (detached) policy and
    reference log-probs, token counts and ``nll``; :meth:`metrics` turns that into TRL's names.
    For ``ipo`` the loss uses length-averaged log-probs (as TRL does); rewards and logged log-probs
    stay summed.
    """

    def __init__(self, config: DPOConfig | Mapping[str, Any] | None = None):
        c = as_section({} if config is None else config, DPOConfig, "dpo")
        self.beta, self.loss_type, self.label_smoothing, self.rpo_alpha = (
            c.beta,
            c.loss_type,
            c.label_smoothing,
            c.rpo_alpha,
        )

    def __call__(
        self, policy: Mapping[str, torch.Tensor], ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pc, pr = policy["chosen_logps"], policy["rejected_logps"]
        if self.loss_type == "ipo":  # IPO is defined on length-averaged log-probs
            nc, nr = policy["chosen_tokens"].clamp(min=1), policy["rejected_tokens"].clamp(min=1)
            losses, _, _ = dpo_loss(pc / nc, pr / nr, ref_chosen / nc, ref_rejected / nr, self.beta, "ipo")
            _, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, ref_chosen, ref_rejected, self.beta, "sigmoid")
        else:
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                pc, pr, ref_chosen, ref_rejected, self.beta, self.loss_type, self.label_smoothing
            )
        nll = -pc.sum() / policy["chosen_tokens"].sum().clamp(min=1)  # token mean over the batch's chosen
        loss = losses.mean() + self.rpo_alpha * nll if self.rpo_alpha else losses.mean()
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

    @staticmethod
    def metrics(out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """TRL's per-batch metrics (:data:`METRICS`): mean rewards, margin, accuracy (chosen reward >
        rejected), mean summed log-probs and the chosen token-mean NLL (``nll_loss``, logged whatever
        ``rpo_alpha`` is)."""
        c, r = out["chosen_rewards"], out["rejected_rewards"]
        return {
            "rewards/chosen": c.mean(),
            "rewards/rejected": r.mean(),
            "rewards/margins": (c - r).mean(),
            "rewards/accuracies": (c > r).float().mean(),
            "logps/chosen": out["policy_chosen_logps"].mean(),
            "logps/rejected": out["policy_rejected_logps"].mean(),
            "nll_loss": out["nll"],
        }
