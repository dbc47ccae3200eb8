"""``evaluation`` and ``compare``: Pareto sweeps and the comparison with baselines."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from infra.config.base import Strict
from infra.config.rewards import RewardSpec


class EvaluationConfig(Strict):
    """Pareto sweeps of a trained model: training's final sweep, ``paretoslider evaluate`` and ``compare``."""

    rewards: list[RewardSpec] | None = None
    """Held-out rewards that judge the fronts, one per objective in ``rewards.objectives`` order
    (the slider's ``w_m`` moves objective ``m``); None scores with the training rewards."""
    points_per_edge: int = Field(11, ge=2)
    """Sweep resolution: 2 objectives ``w1 = 0, 0.1, ..., 1`` at 11; 3+ a simplex lattice."""
    num_samples: int = Field(512, ge=2)
    """Samples per swept preference (the same noise at every point and for every method)."""
    seed: int = 1234
    """Noise seed of the sweep."""
    every: int | None = Field(None, ge=1)
    """Training also sweeps its EMA model every N steps, right after that step's checkpoint (a
    multiple of ``loop.checkpoint_every``, so a resume never re-logs a sweep of a model it trains
    again); None sweeps only at the end."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Level of the t-interval reported around each mean reward."""
    reference_point: list[float] | None = None
    """Hypervolume reference point (one value per objective); None derives it from the base model."""
    ref_quantile: float = Field(0.02, ge=0, le=1)
    """Derived reference: this quantile of the base model's per-sample rewards ..."""
    ref_margin: float = Field(0.1, ge=0)
    """... minus this many inter-quartile ranges of them."""


class SliderVariant(Strict):
    """One more preference-conditioned model to compare (e.g. another scalarisation)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    """Its key in the comparison tables (letters, digits, ``_.-``)."""
    overrides: list[str] = Field(default_factory=list)
    """Dotted overrides applied to the job config for this model, e.g. ``algorithm.scalarisation=tchebycheff``."""


class CompareConfig(Strict):
    """``paretoslider compare``: the slider against baselines trained with the same budget each."""

    methods: list[Literal["slider", "fixed", "soups", "base"]] = Field(
        default_factory=lambda: ["slider", "fixed", "soups", "base"])
    """``fixed``: one early-scalarised model per lattice point; ``soups``: the single-reward models
    (the lattice's vertices) interpolated in weight space; ``base``: the pre-trained model."""
    fixed_points_per_edge: int = Field(5, ge=2)
    """Lattice of the fixed-weight models: 5 gives 5 trade-offs for 2 objectives, 15 for 3."""
    fixed_scalarisation: Literal["early", "tchebycheff"] = "early"
    """How the fixed-weight models scalarise their rewards."""
    variants: list[SliderVariant] = Field(default_factory=list)
    """Extra sliders trained and compared alongside the configured one."""
    results_dir: str = "results"
    """Runs, tables and plots go to ``<results_dir>/<name>/``."""
