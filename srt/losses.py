"""Sequence log-probabilities and the DPO loss family (sigmoid / IPO / hinge), TRL conventions.

Written out here (a few lines each) so that TRL is not a dependency; tests check every variant
against the textbook formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from srt.errors import ConfigError

IGNORE_INDEX = -100
LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label_t | tokens_<t) over the labelled tokens of each sequence.

    logits [B, T, V] and labels [B, T] are aligned like a HF causal LM (the usual shift: logits at
    position t predict the label at t + 1); label -100 means "not scored".
    Returns (sum_logps [B] float32, num_tokens [B] long).

    Memory: log p = logit[label] - logsumexp(logits) is computed one sequence at a time, so only
    one [T, V] float32 temporary exists at once (never a full [B, T, V] log_softmax copy).
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align")
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    safe_labels = labels.masked_fill(~mask, 0).unsqueeze(-1)
    token_logps = []
    for row_logits, row_labels in zip(logits, safe_labels):
        row_logits = row_logits.float()  # no-op for float32; bf16/fp16 upcast one row at a time
        picked = torch.gather(row_logits, -1, row_labels).squeeze(-1)
        token_logps.append(picked - torch.logsumexp(row_logits, dim=-1))
    token_logps = torch.stack(token_logps)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.01,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards (TRL ``DPOTrainer.dpo_loss`` conventions).

    With logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected):
    - ``sigmoid`` (DPO, Rafailov et al.): -logsigmoid(beta*logits)*(1-eps) - logsigmoid(-beta*logits)*eps
      (eps = label_smoothing, the conservative-DPO variant; eps=0 is plain DPO).
    - ``ipo`` (Azar et al.): (logits - 1/(2*beta))**2. IPO is defined on *length-averaged*
      log-probs: pass sum_logps / num_tokens for all four inputs (DPOModule does this for ipo).
    - ``hinge`` (SLiC): relu(1 - beta*logits).
    Rewards are beta * (policy - reference), detached. Returns (losses [B], chosen_rewards [B],
    rejected_rewards [B]).
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
