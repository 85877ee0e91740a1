"""The reward interface: a batch of videos and their prompts in, one score per video out.

Every reward takes RGB videos ``(B, 3, F, H, W)`` in ``[-1, 1]`` (on any device) with one prompt
per video and returns float32 scores ``(B,)`` on the CPU; higher is better. A reward implements
:meth:`Reward.score_video` for one video, or overrides :meth:`Reward.score_batch` when it can do a
whole batch at once. :class:`WeightedSum` combines rewards into one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Reward", "WeightedSum"]


class Reward:
    """Scores videos: ``reward(videos (B, 3, F, H, W), prompts) -> (B,)`` float32 on the CPU.

    Subclasses implement :meth:`score_video` (or override :meth:`score_batch`); :meth:`__call__`
    validates the inputs and the output, so implementations can rely on well-formed arguments.

    Attributes:
        min_frames: Fewest frames a video needs for this reward (e.g. 2 for anything with motion).

    Raises:
        TypeError: On construction of a class that implements neither method.
    """

    min_frames: int = 1

    def __new__(cls, *args: Any, **kwargs: Any) -> Reward:
        """Refuse to build a reward that cannot score (the role of an abstract method)."""
        if cls.score_video is Reward.score_video and cls.score_batch is Reward.score_batch:
            raise TypeError(
                f"{cls.__name__} must implement score_video(video, prompt) or override score_batch"
            )
        return super().__new__(cls)

    def __call__(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        """Score a batch of videos.

        Args:
            videos: RGB videos ``(B, 3, F, H, W)`` in ``[-1, 1]``.
            prompts: One prompt per video.

        Returns:
            Float32 scores ``(B,)`` on the CPU; higher is better.

        Raises:
            ValueError: If ``videos`` is not a ``(B, 3, F, H, W)`` tensor with ``B >= 1`` and
                ``F >= min_frames``, or ``prompts`` is not a sequence of ``B`` strings.
            RuntimeError: If the implementation returns the wrong shape or non-finite scores.
        """
        self._check_inputs(videos, prompts)
        scores = torch.as_tensor(self.score_batch(videos, list(prompts))).detach()
        scores = scores.to(device="cpu", dtype=torch.float32)
        if scores.shape != (videos.shape[0],):
            raise RuntimeError(
                f"{type(self).__name__}.score_batch returned shape {tuple(scores.shape)}, "
                f"expected ({videos.shape[0]},): one score per video"
            )
        if not torch.isfinite(scores).all():
            raise RuntimeError(f"{type(self).__name__} returned non-finite scores {scores.tolist()}")
        return scores

    def score_batch(self, videos: Tensor, prompts: list[str]) -> Tensor:
        """Score a validated batch; by default one :meth:`score_video` call per video.

        Args:
            videos: RGB videos ``(B, 3, F, H, W)`` in ``[-1, 1]``.
            prompts: ``B`` prompts.

        Returns:
            Scores ``(B,)``.
        """
        return torch.tensor(
            [self.score_video(video, prompt) for video, prompt in zip(videos, prompts, strict=True)],
            dtype=torch.float32,
        )

    def score_video(self, video: Tensor, prompt: str) -> float:
        """Score one video.

        Args:
            video: One RGB video ``(3, F, H, W)`` in ``[-1, 1]``.
            prompt: Its prompt.

        Returns:
            The score; higher is better.

        Raises:
            NotImplementedError: If the subclass implements neither this nor :meth:`score_batch`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement score_video(video, prompt) or override score_batch"
        )

    def _check_inputs(self, videos: Tensor, prompts: Sequence[str]) -> None:
        """Raise a ``ValueError`` naming what is wrong with a batch of videos and prompts."""
        if not isinstance(videos, Tensor):
            raise ValueError(f"videos must be a torch.Tensor (B, 3, F, H, W), got {type(videos).__name__}")
        if videos.ndim != 5 or videos.shape[1] != 3 or videos.shape[0] < 1:
            raise ValueError(
                f"{type(self).__name__} expects RGB videos (B, 3, F, H, W) with B >= 1, "
                f"got shape {tuple(videos.shape)}"
            )
        if videos.shape[2] < self.min_frames:
            raise ValueError(
                f"{type(self).__name__} needs videos of at least {self.min_frames} frames, "
                f"got {videos.shape[2]} (shape {tuple(videos.shape)})"
            )
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a sequence of strings, got {type(prompts).__name__}")
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {videos.shape[0]} videos; pass one per video")
        if not all(isinstance(prompt, str) for prompt in prompts):
            raise ValueError("every prompt must be a string")


class WeightedSum(Reward):
    """A weighted sum of rewards: ``sum_k weights[k] * rewards[k](videos, prompts)``.

    Args:
        rewards: The rewards to combine, at least one.
        weights: One finite weight per reward (negative weights turn a reward into a penalty).

    Raises:
        ValueError: If ``rewards`` is empty, the counts differ, or a weight is not finite.
    """

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]) -> None:
        if not rewards:
            raise ValueError("WeightedSum needs at least one reward")
        if len(rewards) != len(weights):
            raise ValueError(
                f"WeightedSum got {len(rewards)} rewards but {len(weights)} weights; pass one each"
            )
        if not all(isinstance(reward, Reward) for reward in rewards):
            raise ValueError("every entry of rewards must be a sfpp.rewards.Reward")
        if not all(math.isfinite(float(weight)) for weight in weights):
            raise ValueError(f"WeightedSum weights must be finite, got {list(weights)}")
        self.rewards: tuple[Reward, ...] = tuple(rewards)
        self.weights: tuple[float, ...] = tuple(float(weight) for weight in weights)
        self.min_frames = max(reward.min_frames for reward in self.rewards)

    def component_scores(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        """Every reward's unweighted scores, e.g. for logging.

        Args:
            videos: RGB videos ``(B, 3, F, H, W)`` in ``[-1, 1]``.
            prompts: One prompt per video.

        Returns:
            Float32 scores ``(K, B)`` on the CPU, one row per reward in order.
        """
        self._check_inputs(videos, prompts)
        return torch.stack([reward(videos, prompts) for reward in self.rewards])  # (K, B)

    def score_batch(self, videos: Tensor, prompts: list[str]) -> Tensor:
        """The weighted sum of the component scores ``(B,)``."""
        weights = torch.tensor(self.weights, dtype=torch.float32)  # (K,)
        return weights @ self.component_scores(videos, prompts)  # (K,) @ (K, B) -> (B,)
