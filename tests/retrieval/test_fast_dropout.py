"""FastDropout: nn.Dropout's expectation and interface from one vectorised random draw."""

import pytest
import torch
from torch import nn

from tandem.retrieval.fast_dropout import FastDropout, fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_a_share_p_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = fast_dropout(x, p, True)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.005)  # binomial sd ~0.001
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)))
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_eval_mode_and_zero_p_are_the_identity_and_the_gradient_flows_through_the_mask():
    x = torch.randn(4, 5, requires_grad=True)
    assert fast_dropout(x, 0.5, False) is x and fast_dropout(x, 0.0, True) is x
    layer = FastDropout(0.5)
    assert isinstance(layer, nn.Dropout) and layer.p == 0.5 and layer.state_dict() == {}
    assert layer.eval()(x) is x
    torch.manual_seed(1)
    y = layer.train()(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)


def test_the_mask_follows_torch_seed():
    torch.manual_seed(3)
    a = fast_dropout(torch.ones(1000), 0.3, True)
    torch.manual_seed(3)
    b = fast_dropout(torch.ones(1000), 0.3, True)
    assert torch.equal(a, b)
