import math

import pytest
import torch

from srt.errors import ConfigError
from srt.losses import dpo_loss, sequence_logps


def _textbook(pc, pr, rc, rr, beta, loss_type, eps):
    """Per-pair formulas written out with python floats."""
    h = (pc - pr) - (rc - rr)
    logsig = lambda x: -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))  # noqa: E731
    if loss_type == "sigmoid":
        return -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * h)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_loss_matches_textbook(loss_type, beta, eps):
    gen = torch.Generator().manual_seed(int(beta * 1000) + len(loss_type))
    pc, pr, rc, rr = (torch.randn(7, generator=gen, dtype=torch.float64) * 30 - 50 for _ in range(4))
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    for i in range(7):
        expected = _textbook(pc[i].item(), pr[i].item(), rc[i].item(), rr[i].item(), beta, loss_type, eps)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logps_matches_naive_loop(dtype):
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 9, 17
    logits = (torch.randn(B, T, V, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :4] = -100  # prompt
    labels[1, 6:] = -100  # right padding
    labels[2, :] = -100  # nothing scored
    sums, counts = sequence_logps(logits, labels)
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


def test_sequence_logps_shape_mismatch():
    with pytest.raises(ValueError, match="do not align"):
        sequence_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
