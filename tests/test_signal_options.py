"""Stage-2 signal options (issue 13 item 5): each option's default is today's behaviour, and each
does what its config reference says on the tiny model."""

import pytest
import torch
from test_sft_module import records

from srt.config import DPOConfig, RunConfig, SFTConfig, load_config
from srt.data import SFTDataModule
from srt.errors import ConfigError
from srt.training.sft import SFTModule

# -- sft.segment_weights ---------------------------------------------------------------------------


def _batches(tokenizer, weights=None, packing=False, batch_size=4):
    config = SFTConfig(
        micro_batch_size=batch_size,
        max_length=256,
        packing=packing,
        **({"segment_weights": weights} if weights is not None else {}),
    )
    dm = SFTDataModule(tokenizer, config, train_records=records())
    dm.setup()
    return list(dm.predict_dataloader())


def _loss_and_grad(module, batch):
    module.model.zero_grad()
    loss, _ = module.masked_lm_loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters() if p.grad is not None]


def test_segment_weights_default_is_the_plain_token_mean(tiny_model, tiny_tokenizer):
    import torch.nn.functional as F

    assert SFTConfig().weighted_segments() is None
    assert SFTConfig(segment_weights={"feedback": 1.0}).weighted_segments() is None
    (batch,) = _batches(tiny_tokenizer)
    assert "loss_weights" not in batch  # defaults: no weights stored, the old code path
    module = SFTModule(tiny_model, tiny_tokenizer, config=SFTConfig())
    module.configure_model()
    with torch.no_grad():
        loss, n = module.masked_lm_loss(batch)
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Weights of exactly 1.0 carried in the batch give the same loss as no weights.
    ones = dict(batch, loss_weights=torch.ones_like(batch["labels"], dtype=torch.float32))
    with torch.no_grad():
        assert module.masked_lm_loss(ones)[0].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("packing", [False, True])
def test_segment_weights_scale_the_gradient_of_their_segment(tiny_model, tiny_tokenizer, packing):
    module = SFTModule(tiny_model, tiny_tokenizer, config=SFTConfig())
    module.configure_model()
    module.model.train(False)
    (plain,) = _batches(tiny_tokenizer, packing=packing)
    (weighted,) = _batches(tiny_tokenizer, {"feedback": 2.0, "refinement": 3.0}, packing=packing)
    (fb_only,) = _batches(tiny_tokenizer, {"response": 0.0, "feedback": 1.0, "refinement": 0.0, "eos": 0.0}, packing)
    (ref_only,) = _batches(tiny_tokenizer, {"response": 0.0, "feedback": 0.0, "refinement": 1.0, "eos": 0.0}, packing)
    assert torch.equal(weighted["input_ids"], plain["input_ids"]) and torch.equal(weighted["labels"], plain["labels"])
    # Only trained tokens carry a weight; feedback tokens 2.0, refinement tokens 3.0.
    w = weighted["loss_weights"]
    trained = plain["labels"] != -100
    assert torch.all(w[~trained] == 0) and set(w[trained].unique().tolist()) == {1.0, 2.0, 3.0}
    l1, g1 = _loss_and_grad(module, plain)
    lw, gw = _loss_and_grad(module, weighted)
    lf, gf = _loss_and_grad(module, fb_only)
    lr, gr = _loss_and_grad(module, ref_only)
    # weights (1, 2, 3, 1) = all ones + 1 x feedback + 2 x refinement: linear in the loss and its gradient.
    assert lw.item() == pytest.approx((l1 + lf + 2 * lr).item(), rel=1e-5)
    for a, b, c, d in zip(gw, g1, gf, gr):
        assert torch.allclose(a, b + c + 2 * d, atol=1e-6, rtol=1e-4)
    assert lf > 0 and lr > 0


def test_segment_weights_are_validated_early():
    with pytest.raises(ConfigError, match="unknown segments"):
        load_config(None, ["sft.segment_weights={critique: 2.0}"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_config(None, ["sft.segment_weights={feedback: -1}"])
    cfg = load_config(None, ["sft.segment_weights={feedback: 2}"])
    assert cfg.sft.segment_weights == {"response": 1.0, "feedback": 2.0, "refinement": 1.0, "eos": 1.0}


# -- dpo.rpo_alpha ---------------------------------------------------------------------------------


def test_rpo_alpha_is_trl_name_and_reads_the_old_one():
    assert DPOConfig().rpo_alpha == 0.0
    assert DPOConfig(nll_weight=0.3).rpo_alpha == 0.3
    assert load_config(None, ["dpo.nll_weight=0.5"]).dpo.rpo_alpha == 0.5
    with pytest.raises(ConfigError, match="rpo_alpha only"):
        load_config(None, ["dpo.nll_weight=0.5", "dpo.rpo_alpha=0.5"])
    with pytest.raises(ConfigError):
        load_config(None, ["dpo.rpo_alpha=-1"])
    assert "rpo_alpha" in RunConfig().dpo.model_dump()
