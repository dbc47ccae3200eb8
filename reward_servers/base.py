"""The contract every reward follows, and the batch it scores.

A reward is any object with ``name``, ``inputs``, ``range``, ``direction`` and a batched
``score(batch) -> float32[B]``. Rewards are plain classes registered by name (see ``registry``); the
same object runs in the driver (``backend="local"``) or inside a Ray Serve replica.

Videos ``[B, F, 3, H, W]`` reach image rewards frame by frame: :func:`score_batch` (the one place
every reward is called) scores the ``B * F`` frames and averages each video's frames, unless the
reward sets ``takes_video = True`` and scores whole videos itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

INPUT_KINDS = ("samples", "prompts", "source_images")
"""What a reward may ask for; ``samples`` is always present."""


@dataclass
class RewardInputs:
    """One batch to score: ``B`` samples plus the prompts / source images some rewards need."""

    samples: np.ndarray
    """``[B, ...]`` float32: 2-D points for toy2d; images ``[B, 3, H, W]`` (channels first) in [0, 1]
    (``reward_servers.codecs``); videos ``[B, F, 3, H, W]`` in [0, 1]. Images may also travel as uint8
    (0-255, a quarter of the bytes): :func:`score_batch` hands a reward ``x / 255`` in float32."""
    prompts: list[str] | None = None
    """``B`` text prompts (instruction for editing tasks)."""
    source_images: np.ndarray | None = None
    """``[B, 3, H, W]`` float32 source images in [0, 1] of an editing task (same layout as ``samples``)."""

    def __post_init__(self) -> None:
        self.samples = np.asarray(self.samples)
        if self.samples.dtype != np.uint8:
            self.samples = self.samples.astype(np.float32, copy=False)
        if self.samples.ndim < 1:
            raise ValueError(f"RewardInputs.samples must be [B, ...], got a scalar of shape {self.samples.shape}")
        n = len(self)
        if self.prompts is not None:
            self.prompts = list(self.prompts)
            if len(self.prompts) != n:
                raise ValueError(f"RewardInputs.prompts has {len(self.prompts)} entries for {n} samples")
        if self.source_images is not None:
            self.source_images = np.asarray(self.source_images, dtype=np.float32)
            if self.source_images.shape[:1] != (n,):
                raise ValueError(
                    f"RewardInputs.source_images has shape {self.source_images.shape} for {n} samples"
                )

    def __len__(self) -> int:
        return self.samples.shape[0]

    def require(self, needs: Iterable[str], reward: str) -> None:
        """Raise if an input that ``reward`` needs is absent (``reward`` names it in the message)."""
        for kind in needs:
            if getattr(self, kind) is None:
                raise ValueError(f"reward {reward} needs '{kind}' but the batch has no {kind}")

    def split(self, sizes: Sequence[int]) -> list[RewardInputs]:
        """Consecutive slices of ``sizes[i]`` samples each (``sum(sizes) == len(self)``)."""
        if sum(sizes) != len(self):
            raise ValueError(f"split sizes {list(sizes)} sum to {sum(sizes)}, not the batch size {len(self)}")
        bounds = np.cumsum([0, *sizes])
        return [self._slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def _slice(self, a: int, b: int) -> RewardInputs:
        return RewardInputs(
            samples=self.samples[a:b],
            prompts=None if self.prompts is None else self.prompts[a:b],
            source_images=None if self.source_images is None else self.source_images[a:b],
        )

    def as_float(self) -> RewardInputs:
        """The batch with uint8 images as float32 in [0, 1] (what every reward reads)."""
        if self.samples.dtype != np.uint8:
            return self
        return RewardInputs(self.samples.astype(np.float32) / 255.0, self.prompts, self.source_images)

    @classmethod
    def concat(cls, parts: Sequence[RewardInputs]) -> RewardInputs:
        """One batch from several; an optional field present in only some parts is dropped.

        Serve batches requests from different callers; each request was checked against the
        reward's ``inputs`` before it was queued, so a dropped field is one the reward does not use.
        """
        if len({p.samples.dtype for p in parts}) > 1:  # uint8 images beside float ones: compare as floats
            parts = [p.as_float() for p in parts]
        prompts = None
        if all(p.prompts is not None for p in parts):
            prompts = [s for p in parts for s in p.prompts]
        sources = None
        if all(p.source_images is not None for p in parts):
            sources = np.concatenate([p.source_images for p in parts])
        return cls(np.concatenate([p.samples for p in parts]), prompts, sources)


@dataclass(frozen=True)
class RewardRef:
    """A batch that stays in the object store: what the training loop sends the reward servers.

    A rollout actor returns its :class:`RewardInputs` as a task result; the driver passes this handle
    (the ref inside a list, so Ray does not resolve it in the router) and every objective's replicas
    read the same object, each its ``[start, stop)`` slice, from their own node's object store.
    """

    refs: list
    """``[ObjectRef]`` of a :class:`RewardInputs`."""
    size: int
    """Samples in the batch."""
    kinds: tuple[str, ...]
    """The ``INPUT_KINDS`` the batch carries (checked against each reward's ``inputs`` before sending)."""
    start: int = 0
    stop: int | None = None
    """The slice a request scores (``stop`` None: to the end)."""

    def __len__(self) -> int:
        return (self.size if self.stop is None else self.stop) - self.start

    def require(self, needs: Iterable[str], reward: str) -> None:
        """Raise if an input that ``reward`` needs is absent (as :meth:`RewardInputs.require`)."""
        for kind in needs:
            if kind not in self.kinds:
                raise ValueError(f"reward {reward} needs '{kind}' but the batch has no {kind}")

    def slices(self, count: int) -> list[RewardRef]:
        """The batch in ``count`` near-equal consecutive slices (fewer if it has fewer samples)."""
        sizes = [len(part) for part in np.array_split(np.arange(len(self)), max(1, min(count, len(self))))]
        bounds = self.start + np.cumsum([0, *sizes])
        return [RewardRef(self.refs, self.size, self.kinds, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def resolve(self, batch: RewardInputs) -> RewardInputs:
        """This slice of ``batch``, the object ``refs[0]`` resolved to."""
        if len(batch) != self.size:
            raise ValueError(f"RewardRef of {self.size} samples resolved to a batch of {len(batch)}")
        return batch._slice(self.start, self.start + len(self))

    @classmethod
    def of(cls, inputs: RewardInputs, ref) -> RewardRef:
        """The handle of ``inputs`` already put as ``ref``."""
        return cls([ref], len(inputs), tuple(k for k in INPUT_KINDS if getattr(inputs, k) is not None))


@runtime_checkable
class Reward(Protocol):
    """A batched scoring function with the metadata the driver and the evaluation need."""

    name: str
    """Registry key."""
    inputs: tuple[str, ...]
    """Subset of ``INPUT_KINDS`` that ``score`` reads."""
    range: tuple[float, float]
    """Closed interval the scores lie in (``-inf`` / ``inf`` for unbounded ends)."""
    direction: Literal["max", "min"]
    """Whether larger (``max``) or smaller (``min``) scores are better."""

    def score(self, batch: RewardInputs) -> np.ndarray:
        """``[B]`` float32 scores of ``batch``."""
        ...


@dataclass(frozen=True)
class RewardInfo:
    """What the driver knows about one objective without holding the reward itself."""

    label: str
    """Objective name in the config (``RewardSpec.display``), unique per run."""
    name: str
    """Registry key of the reward."""
    inputs: tuple[str, ...]
    range: tuple[float, float]
    direction: Literal["max", "min"]

    @classmethod
    def of(cls, reward: Reward, label: str) -> RewardInfo:
        return cls(label, reward.name, tuple(reward.inputs), tuple(reward.range), reward.direction)

    @property
    def who(self) -> str:
        """How messages name this objective: ``'target_a' (toy2d_target)``."""
        return f"'{self.label}' ({self.name})"


def score_batch(reward: Reward, batch: RewardInputs) -> np.ndarray:
    """``reward.score(batch)``; a video batch ``[B, F, 3, H, W]`` is scored as ``B * F`` frames (with
    each video's prompt and source image) and each video gets its frames' mean score, unless the
    reward declares ``takes_video = True``. uint8 images are scored as ``x / 255`` unless the reward
    declares ``takes_uint8 = True`` (it reads the bytes as they arrived)."""
    if not getattr(reward, "takes_uint8", False):
        batch = batch.as_float()
    if batch.samples.ndim != 5 or getattr(reward, "takes_video", False):
        return reward.score(batch)
    b, f = batch.samples.shape[:2]
    frames = RewardInputs(batch.samples.reshape(b * f, *batch.samples.shape[2:]),
                          None if batch.prompts is None else [p for p in batch.prompts for _ in range(f)],
                          None if batch.source_images is None else np.repeat(batch.source_images, f, axis=0))
    scores = np.asarray(reward.score(frames), dtype=np.float32)
    # A wrong shape is left for checked_scores to name.
    return scores.reshape(b, f).mean(axis=1) if scores.shape == (b * f,) else scores


def checked_scores(scores: np.ndarray, n: int, info: RewardInfo) -> np.ndarray:
    """``scores`` as float32 ``[n]``; a reward returning another shape is a bug named here."""
    out = np.asarray(scores, dtype=np.float32)
    if out.shape != (n,):
        raise ValueError(f"reward {info.who} returned scores of shape {out.shape}, expected ({n},)")
    return out


class RewardServerError(RuntimeError):
    """Scoring failed or timed out; the message (and ``objective``) name the reward server."""

    def __init__(self, message: str, objective: str | None = None):
        super().__init__(message)
        self.objective = objective
        """Label of the objective that failed (None when the router itself failed)."""

    def __reduce__(self):
        # Ray pickles exceptions raised in replicas; the default reduce would drop ``objective``.
        return (type(self), (str(self), self.objective))
