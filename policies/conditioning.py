"""How the preference vector ``w`` enters a velocity network (paper, section "conditioning").

Two modules, both near-identity at initialisation and skipped entirely when ``w`` is ``None``
(so a call without ``w`` is *exactly* the base model, the KL reference):

1. :class:`PreferenceEncoder` — MLP ``w -> d_emb`` added to the timestep (+ pooled text) embedding;
   the last layer starts at ~N(0, 1e-3) with zero bias.
2. :class:`SliderProjector` — sinusoidal features of ``w`` -> MLP -> one vector, added with a
   learned gate (zero at init) as a residual to the hidden stream of every block.

Backbones call :meth:`PreferenceConditioning.embedding_delta` and
:meth:`PreferenceConditioning.residual`; nothing here knows about a particular network.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_features(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """``[..., D] -> [..., D * 2 * num_freqs]`` sin/cos features at frequencies ``2^k * pi``."""
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x.unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class PreferenceEncoder(nn.Module):
    """``w -> delta`` added to the conditioning embedding."""

    def __init__(self, num_objectives: int, embed_dim: int, hidden_dim: int, init_std: float = 1e-3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_objectives, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embed_dim)
        )
        nn.init.normal_(self.net[-1].weight, std=init_std)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w)


class SliderProjector(nn.Module):
    """``w -> gate * MLP(sin/cos(w))``: one residual vector shared by every block."""

    def __init__(self, num_objectives: int, out_dim: int, hidden_dim: int, num_freqs: int = 4):
        super().__init__()
        self.num_freqs = num_freqs
        self.net = nn.Sequential(
            nn.Linear(num_objectives * 2 * num_freqs, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim)
        )
        # Zero gate: exactly identity at init, yet d(out)/d(gate) = MLP output != 0, so it learns.
        self.gate = nn.Parameter(torch.zeros(out_dim))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.gate * self.net(sinusoidal_features(w, self.num_freqs))


class PreferenceConditioning(nn.Module):
    """The two preference modules of one backbone; both return ``None`` when ``w`` is ``None``."""

    def __init__(self, num_objectives: int, embed_dim: int, stream_dim: int, hidden_dim: int = 64):
        super().__init__()
        self.num_objectives = num_objectives
        self.encoder = PreferenceEncoder(num_objectives, embed_dim, hidden_dim)
        self.slider = SliderProjector(num_objectives, stream_dim, hidden_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.slider.gate.dtype

    def embedding_delta(self, w: torch.Tensor | None) -> torch.Tensor | None:
        """Added to the timestep/conditioning embedding (``[B, embed_dim]``)."""
        # w arrives fp32 from the batch; a bf16 learner (DeepSpeed casts the whole module) needs it in bf16.
        return None if w is None else self.encoder(w.to(self.dtype))

    def residual(self, w: torch.Tensor | None) -> torch.Tensor | None:
        """Added to the hidden stream of every block (``[B, stream_dim]``)."""
        return None if w is None else self.slider(w.to(self.dtype))
