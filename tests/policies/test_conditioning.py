"""Preference conditioning: identity at init and exactly the base model without w."""

import torch

from policies.conditioning import PreferenceConditioning, sinusoidal_features
from policies.toy2d import Toy2dVelocity


def _base_forward(model: Toy2dVelocity, x, t):
    """The toy network computed by hand, with no preference modules at all."""
    from policies.toy2d import timestep_embedding

    temb = model.time_mlp(timestep_embedding(t, model.time_embed_dim))
    h = model.in_proj(x)
    for b in model.blocks:
        h = b(h, temb)
    return model.out_proj(torch.nn.functional.silu(h))


def test_without_w_is_exactly_base_even_after_training_pref_modules():
    torch.manual_seed(0)
    model = Toy2dVelocity(2, hidden_dim=32, num_blocks=2)
    with torch.no_grad():
        for p in model.pref.parameters():
            p.add_(torch.randn_like(p))
    x, t = torch.randn(8, 2), torch.rand(8)
    assert torch.equal(model(x, t, None), _base_forward(model, x, t))
    assert not torch.allclose(model(x, t, torch.full((8, 2), 0.5)), _base_forward(model, x, t))


def test_near_identity_at_init():
    torch.manual_seed(0)
    model = Toy2dVelocity(3, hidden_dim=32, num_blocks=2)
    x, t = torch.randn(8, 2), torch.rand(8)
    w = torch.softmax(torch.randn(8, 3), -1)
    diff = (model(x, t, w) - model(x, t, None)).abs().max()
    assert 0 < diff < 1e-2
    cond = PreferenceConditioning(3, 16, 16)
    assert torch.equal(cond.residual(w), torch.zeros(8, 16))  # zero gate
    assert cond.residual(None) is None and cond.embedding_delta(None) is None


def test_gate_receives_gradient_at_init():
    cond = PreferenceConditioning(2, 8, 8)
    cond.residual(torch.tensor([[0.3, 0.7]])).sum().backward()
    assert cond.slider.gate.grad.abs().sum() > 0


def test_sinusoidal_features_shape():
    assert sinusoidal_features(torch.rand(4, 3), 4).shape == (4, 24)
