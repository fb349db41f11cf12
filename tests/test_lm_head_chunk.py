"""``lm_head_chunk_size``: the LM head run a chunk of labelled positions at a time, recomputed in the
backward. Same log-probs, losses and gradients as the plain path; fewer bytes saved for the backward."""

import pytest
import torch

from srt.config import DPOConfig, LoraConfig, SFTConfig
from srt.data import DPODataModule
from srt.errors import ConfigError
from srt.records import Feedback, FeedbackRecord
from srt.training.dpo_objective import concatenated_forward
from srt.training.policy import apply_lora, scored_token_logps
from srt.training.sft import SFTModule


def _dpo_batch(tokenizer, packing=False):
    pairs = [
        {
            "id": str(i),
            "prompt": f"Question {i}: how many apples?",
            "chosen": "Three apples. " * (i + 1),
            "rejected": "No idea" + " really" * i,
        }
        for i in range(4)
    ]
    dm = DPODataModule(tokenizer, DPOConfig(micro_batch_size=4, max_length=128, packing=packing), train_records=pairs)
    return next(iter(dm.predict_dataloader()))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_chunked_head_gives_the_same_logps_and_gradients(tiny_model_dir, tiny_tokenizer, lora, packing):
    from transformers import AutoModelForCausalLM

    batch = _dpo_batch(tiny_tokenizer, packing)
    results, grads = {}, {}
    for chunk in (None, 7):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32")
        if lora:
            model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))
        out = concatenated_forward(model, batch, lm_head_chunk_size=chunk)
        (out["chosen_logps"] - 0.5 * out["rejected_logps"]).sum().backward()
        results[chunk], grads[chunk] = out, _grads(model)
    for key in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(results[7][key], results[None][key], atol=1e-4, rtol=1e-5)
    for key in ("chosen_tokens", "rejected_tokens"):
        assert torch.equal(results[7][key], results[None][key])
    assert grads[7].keys() == grads[None].keys() and grads[None]
    for name, grad in grads[None].items():
        torch.testing.assert_close(grads[7][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def _saved_bytes(fn):
    """Bytes of the distinct tensors autograd saves for the backward while ``fn`` runs (parameters excluded)."""
    seen = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_chunked_head_saves_no_logits_for_the_backward(tiny_model, tiny_tokenizer):
    batch = _dpo_batch(tiny_tokenizer)
    vocab = tiny_model.config.vocab_size
    plain, _ = _saved_bytes(lambda: concatenated_forward(tiny_model, batch))
    chunked, out = _saved_bytes(lambda: concatenated_forward(tiny_model, batch, lm_head_chunk_size=8))
    scored = int(out["chosen_tokens"].sum() + out["rejected_tokens"].sum())
    logits_bytes = scored * vocab * 4
    # The plain path keeps the [scored, vocab] float32 logits; the chunked one keeps the chunks' inputs only.
    assert plain - chunked >= 0.9 * logits_bytes, (plain, chunked, logits_bytes)


def test_sft_loss_and_segment_weights_are_unchanged(tiny_model_dir, tiny_tokenizer):
    from srt.data import SFTDataModule

    records = [
        FeedbackRecord(
            id=str(i),
            stage=1,
            instruction=f"Add {i} and 2.",
            response=f"It is {i + 1}.",
            feedback=Feedback(weaknesses="Wrong sum.", suggestions="Add again.", score=3, raw="raw"),
            refinement=f"{i} + 2 = {i + 2}.",
        )
        for i in range(3)
    ]
    losses = {}
    for chunk in (None, 5):
        cfg = SFTConfig(
            micro_batch_size=3,
            max_length=128,
            lm_head_chunk_size=chunk,
            segment_weights={"feedback": 2.0, "refinement": 3.0},
        )
        dm = SFTDataModule(tiny_tokenizer, cfg, train_records=records)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        module = SFTModule(tiny_model_dir, config=cfg)
        module.configure_model()
        losses[chunk] = module.masked_lm_loss(batch)
    torch.testing.assert_close(losses[5][0], losses[None][0], atol=1e-5, rtol=1e-5)
    assert losses[5][1] == losses[None][1]


def test_unknown_model_type_is_refused(tiny_model, tiny_tokenizer):
    batch = _dpo_batch(tiny_tokenizer)
    tiny_model.config.model_type = "gemma2"  # its logits are soft-capped: not the plain head
    with pytest.raises(ConfigError, match="model type 'gemma2' is not one whose logits"):
        scored_token_logps(tiny_model, batch["chosen_input_ids"], batch["chosen_labels"], lm_head_chunk_size=4)
