"""Test oracles: the textbook computations that srt's training code is checked against.

They are written the plain way (full logits, python floats), which the real code avoids for memory
and speed; they live here, not in ``srt/``, because nothing in training uses them.
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


def full_logits_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label_t | tokens_<t) over the labelled tokens of each sequence, from the full logits.

    logits [B, T, V] and labels [B, T] are aligned like a HF causal LM (the usual shift: logits at
    position t predict the label at t + 1); label -100 means "not scored".
    Returns (sum_logps [B] float32, num_tokens [B] long). The oracle of
    ``srt.training.dpo_objective.concatenated_forward``, which never builds the [B, T, V] logits.
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


def textbook_dpo_loss(pc: float, pr: float, rc: float, rr: float, beta: float, loss_type: str, eps: float) -> float:
    """One pair's DPO-family loss written out with python floats (summed log-probs of policy chosen /
    rejected and reference chosen / rejected; eps = label smoothing)."""
    h = (pc - pr) - (rc - rr)

    def logsig(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))

    if loss_type == "sigmoid":
        return -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * h)
