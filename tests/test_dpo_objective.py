"""srt.training.dpo_objective against the textbook: the loss family, the objective (IPO on length-averaged
log-probs, the NLL term, TRL's metric names) and the sequence log-probs against full-logits oracles."""

import math

import pytest
import torch
from oracles import full_logits_sequence_logps, textbook_dpo_loss

from srt.config import DPOConfig
from srt.errors import ConfigError
from srt.training.dpo_objective import METRICS, DPOObjective, concatenated_forward, dpo_loss


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_loss_matches_textbook(loss_type, beta, eps):
    gen = torch.Generator().manual_seed(int(beta * 1000) + len(loss_type))
    pc, pr, rc, rr = (torch.randn(7, generator=gen, dtype=torch.float64) * 30 - 50 for _ in range(4))
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    for i in range(7):
        expected = textbook_dpo_loss(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta, loss_type, eps)
        assert abs(losses[i].item() - expected) < 1e-6 * max(1.0, abs(expected))
        assert abs(chosen_r[i].item() - beta * (pc[i].item() - rc[i].item())) < 1e-9
        assert abs(rejected_r[i].item() - beta * (pr[i].item() - rr[i].item())) < 1e-9
    assert not chosen_r.requires_grad


def test_dpo_loss_at_equal_policy_and_reference_is_log2():
    x = torch.randn(5)
    losses, c, r = dpo_loss(x, x - 1, x, x - 1, beta=0.01)
    assert torch.allclose(losses, torch.full((5,), math.log(2)))
    assert torch.all(c == 0) and torch.all(r == 0)


def test_dpo_loss_gradient_flows_to_policy_only():
    pc = torch.randn(3, requires_grad=True)
    rc = torch.randn(3)
    losses, _, _ = dpo_loss(pc, torch.zeros(3), rc, torch.zeros(3), beta=0.1)
    losses.sum().backward()
    # d/dpc of -logsigmoid(beta*h) = -beta * sigmoid(-beta*h)
    expected = -0.1 * torch.sigmoid(-0.1 * (pc.detach() - rc))
    assert torch.allclose(pc.grad, expected, atol=1e-6)


def test_dpo_loss_rejects_bad_config():
    x = torch.zeros(2)
    with pytest.raises(ConfigError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="kto")
    with pytest.raises(ConfigError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ConfigError, match="dpo settings: loss_type"):
        DPOObjective({"loss_type": "kto"})  # the objective takes the dpo section, validated as one


def _policy(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "chosen_logps": torch.randn(n, generator=gen, dtype=torch.float64) * 10 - 40,
        "rejected_logps": torch.randn(n, generator=gen, dtype=torch.float64) * 10 - 40,
        "chosen_tokens": torch.randint(1, 30, (n,), generator=gen),
        "rejected_tokens": torch.randint(1, 30, (n,), generator=gen),
    }


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_objective_is_the_textbook_loss_plus_the_nll_term(loss_type):
    policy = _policy()
    rc, rr = policy["chosen_logps"] + 3.0, policy["rejected_logps"] - 2.0
    objective = DPOObjective(DPOConfig(beta=0.1, loss_type=loss_type, rpo_alpha=0.5, label_smoothing=0.1))
    out = objective(policy, rc, rr)
    nc, nr = policy["chosen_tokens"].double(), policy["rejected_tokens"].double()
    for i in range(4):
        args = [t[i].item() for t in (policy["chosen_logps"], policy["rejected_logps"], rc, rr)]
        if loss_type == "ipo":  # IPO on length-averaged log-probs (TRL's convention)
            args = [a / n for a, n in zip(args, (nc[i], nr[i], nc[i], nr[i]))]
        eps = 0.1 if loss_type == "sigmoid" else 0.0  # label smoothing is the sigmoid loss's
        expected = textbook_dpo_loss(*[float(a) for a in args], 0.1, loss_type, eps)
        assert out["losses"][i].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    nll = -policy["chosen_logps"].sum() / nc.sum()  # token mean over the batch's chosen completions
    assert out["nll"].item() == pytest.approx(nll.item())
    assert out["loss"].item() == pytest.approx(out["losses"].mean().item() + 0.5 * nll.item())
    # Rewards stay beta * (summed policy - reference) log-probs, whatever the loss.
    assert torch.allclose(out["chosen_rewards"], 0.1 * (policy["chosen_logps"] - rc))
    assert torch.allclose(out["rejected_rewards"], 0.1 * (policy["rejected_logps"] - rr))


def test_metrics_have_trl_names_and_values():
    policy = _policy()
    rc, rr = policy["chosen_logps"] - 1.0, policy["rejected_logps"] + 1.0  # chosen gains 1, rejected loses 1
    out = DPOObjective(DPOConfig(beta=0.5))(policy, rc, rr)
    metrics = DPOObjective.metrics(out)
    assert (
        tuple(metrics)
        == METRICS
        == (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "nll_loss",
        )
    )
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert metrics["rewards/margins"].item() == pytest.approx(1.0)
    assert metrics["rewards/accuracies"].item() == 1.0
    assert metrics["logps/chosen"].item() == pytest.approx(policy["chosen_logps"].mean().item())
    assert metrics["logps/rejected"].item() == pytest.approx(policy["rejected_logps"].mean().item())


# -- the oracle, and the real sequence log-probs against it -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_logits_oracle_matches_naive_loop(dtype):
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 9, 17
    logits = (torch.randn(B, T, V, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :4] = -100  # prompt
    labels[1, 6:] = -100  # right padding
    labels[2, :] = -100  # nothing scored
    sums, counts = full_logits_sequence_logps(logits, labels)
    for b in range(B):
        total, n = 0.0, 0
        for t in range(T - 1):
            label = labels[b, t + 1].item()
            if label == -100:
                continue
            total += torch.log_softmax(logits[b, t].double(), dim=-1)[label].item()
            n += 1
        assert counts[b].item() == n
        assert abs(sums[b].item() - total) < 1e-4 * max(1.0, abs(total))
    assert sums.dtype == torch.float32 and sums[2].item() == 0.0


def test_full_logits_oracle_shape_mismatch():
    with pytest.raises(ValueError, match="do not align"):
        full_logits_sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


@torch.no_grad()
def test_concatenated_forward_equals_the_full_logits_oracle(tiny_model, tiny_tokenizer):
    """Chosen and rejected of unequal lengths (padding on both, and across sides in the stacked batch)."""
    from srt.data import DPODataModule

    pairs = [
        {
            "id": "a",
            "prompt": "What is the capital of France?",
            "chosen": "Paris is.",
            "rejected": "It is Rome, I think.",
        },
        {"id": "b", "prompt": "Name a colour.", "chosen": "Blue, like the sky at noon.", "rejected": "Five."},
        {"id": "c", "prompt": "Count to three, please.", "chosen": "1 2 3", "rejected": "one two"},
    ]
    dm = DPODataModule(tiny_tokenizer, DPOConfig(micro_batch_size=3, max_length=64), train_records=pairs)
    batch = next(iter(dm.predict_dataloader()))
    assert batch["chosen_input_ids"].shape[1] != batch["rejected_input_ids"].shape[1]
    ours = concatenated_forward(tiny_model, batch)
    for side in ("chosen", "rejected"):
        logits = tiny_model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"]).logits
        expected, tokens = full_logits_sequence_logps(logits, batch[f"{side}_labels"])
        torch.testing.assert_close(ours[f"{side}_logps"], expected, atol=1e-4, rtol=1e-6)
        assert torch.equal(ours[f"{side}_tokens"], tokens)
        assert ours[f"{side}_logps"].dtype == torch.float32
