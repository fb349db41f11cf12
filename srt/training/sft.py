"""Stage 1: supervised fine-tuning on ``instruction -> response -> feedback -> refinement``.

:class:`SFTModule` is the policy (:class:`~srt.training.policy.PolicyModule`) with the masked
next-token loss; its settings are the run config's ``sft`` section::

    SFTModule(base_model, tokenizer, config=cfg.sft, model_config=cfg.model)
"""

from __future__ import annotations

import time

import torch

from srt.config import SFTConfig
from srt.errors import ConfigError
from srt.training.policy import PolicyModule, scored_token_logps


class SFTModule(PolicyModule):
    """Masked next-token loss over the labelled tokens (labels != -100).

    The loss is the token mean over a micro-batch: sum of CE over labelled tokens / number of
    labelled tokens. With the data module masking the instruction (and padding) this is TRL's
    ``completion_only_loss`` semantics. Under gradient accumulation each micro-batch mean is
    averaged with equal weight (the HF Trainer convention). Logits are computed only at the
    labelled positions (:func:`~srt.training.policy.scored_token_logps`; ``sft.lm_head_chunk_size``
    bounds them further). With ``sft.segment_weights``
    (batches carry ``loss_weights``) each token's CE is multiplied by its segment's weight before the
    sum; the divisor stays the number of labelled tokens, so weights of 1.0 give the same loss.

    Logs ``train/loss``, ``train/lr``, ``train/tokens_per_s`` (all non-pad tokens / s on this device),
    ``train/trained_tokens_per_s`` (labelled tokens / s on this device) and ``val/loss``.
    """

    config_schema = SFTConfig
    section = "sft"
    config: SFTConfig

    def masked_lm_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        # Log-probs only where a label is (see scored_token_logps); packed batches carry position_ids, no mask.
        token_logps, scored = scored_token_logps(
            self.model,
            batch["input_ids"],
            batch["labels"],
            batch.get("attention_mask"),
            batch.get("position_ids"),
            lm_head_chunk_size=self.config.lm_head_chunk_size,
        )
        num_tokens = torch.tensor(token_logps.numel(), device=token_logps.device)
        if num_tokens == 0:
            raise ConfigError("an SFT batch has no labelled tokens (all -100): check max_length/truncation")
        # Cross-entropy = -log p(label), in float32 as HF computes its own loss (bf16 loses precision over a
        # large vocabulary).
        if "loss_weights" in batch:  # sft.segment_weights: each token's CE times its segment's weight
            weights = batch["loss_weights"][:, 1:][scored].to(token_logps.device)
            loss_sum = -(token_logps * weights).sum()
        else:
            loss_sum = -token_logps.sum()
        return loss_sum / num_tokens, num_tokens

    def training_step(self, batch, batch_idx):
        loss, num_tokens = self.masked_lm_loss(batch)
        total = batch["attention_mask"].sum() if "attention_mask" in batch else batch["num_tokens"]  # packed: no mask
        self._step_tokens = (int(num_tokens), int(total))
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log_lr()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        trained, total = self._step_tokens
        self.log("train/tokens_per_s", total / elapsed, on_step=True, on_epoch=False)
        self.log("train/trained_tokens_per_s", trained / elapsed, on_step=True, on_epoch=False)

    def validation_step(self, batch, batch_idx):
        loss, num_tokens = self.masked_lm_loss(batch)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=int(num_tokens), prog_bar=True)
        return loss
