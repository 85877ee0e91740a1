"""Exact, lower-variance regression targets for single frames of the built-in world.

A denoiser trained with the squared error against the clean frame ``x0`` converges to the posterior
mean ``E[x0 | x_t, prompt]``, but each training target is one draw from that posterior: at middle
and high noise levels the target varies far more than the mean the model has to learn, and the
little a shape word changes in the mean is buried in that variance.

Any target ``T`` with ``E[T | x_t, prompt] = E[x0 | x_t, prompt]`` has the same minimiser. The
posterior mean *given more than the model sees* is one (the tower property): here, given the
prompt, the frame's background colour and every object but one, the clean frame is one of a few
hundred templates (the remaining object at each size and integer position), and its posterior
mean can be computed exactly:

``T_a = E[x0 | x_t, prompt, background, objects other than a]``.

For a two-object frame the target is the average of ``T_a`` over both objects (each is valid, so
is their mean). Samples whose prompt was dropped for classifier-free guidance take the same target:
conditioning the target on the true prompt is conditioning on more than the model sees. The
target equals ``x0`` at ``sigma -> 0`` and the prior mean of the free object at ``sigma -> 1``.

The prior over a placement is the world's: the size uniform over ``[min_size, max_size]``, each
coordinate of the top-left corner uniform on ``[0, frame - size]`` and rounded half-up, so the two
extreme pixels have half the probability of the others (:func:`placement_log_prior`).

This is the idea of Rao-Blackwellised (or "stable target field") training targets; in the built-in
world the reference set is every template, so the posterior is exact rather than estimated. It
applies to single frames only: the frames of a clip inform each other, so a per-frame posterior is
not a valid target for a video denoiser, and video batches keep ``x0``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sfpp.world.grammar import COLOURS, PALETTE, SHAPES
from sfpp.world.scene import DEFAULT_WORLD, shape_mask

__all__ = ["WorldPosteriorTarget", "placement_log_prior", "placement_masks"]


def placement_log_prior(frame_size: int, min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every placement of an object and its log-probability under the world's sampler.

    Args:
        frame_size: Frame side in pixels.
        min_size: Smallest object side.
        max_size: Largest object side.

    Returns:
        ``(placements, log_prior)``: int64 ``(P, 3)`` rows ``[size, x, y]`` (sizes ascending, then
        ``y``, then ``x``) and float64 ``(P,)`` log-probabilities summing to one in probability.
    """
    placements, log_prior = [], []
    sizes = range(min_size, max_size + 1)
    for size in sizes:
        limit = frame_size - size
        # A start uniform on [0, limit] rounded half-up: the end pixels get half an interval each.
        coordinate = np.full(limit + 1, 1.0 / limit)
        coordinate[[0, -1]] = 0.5 / limit
        for y in range(limit + 1):
            for x in range(limit + 1):
                placements.append((size, x, y))
                log_prior.append(np.log(coordinate[x] * coordinate[y] / len(sizes)))
    return np.asarray(placements, dtype=np.int64), np.asarray(log_prior)


def placement_masks(shape: str, frame_size: int, min_size: int, max_size: int) -> np.ndarray:
    """``(P, H, W)`` bool masks of ``shape`` at every placement, in :func:`placement_log_prior`'s order."""
    placements, _ = placement_log_prior(frame_size, min_size, max_size)
    frames = np.zeros((len(placements), frame_size, frame_size), dtype=bool)
    for index, (side, x, y) in enumerate(placements.tolist()):
        frames[index, y : y + side, x : x + side] = shape_mask(shape, side)
    return frames


class WorldPosteriorTarget:
    """The exact posterior-mean target of one-frame world batches (see the module docstring).

    Called by the teacher stage (``stage.x0_target``) with the clean latents, the noisy input, the
    noise levels and the batch. Batches of one-frame clips that carry their layout (the image
    batches of :class:`~sfpp.world.datamodule.WorldDataModule`) get the posterior mean;
    any other batch (videos) gets ``x0`` back unchanged. The latents must be the pixels (the
    world's :class:`~sfpp.codecs.PixelCodec` without space-to-depth).

    Args:
        frame_size: Frame side in pixels (``data.frame_size``).
        min_size: Smallest object side of the world.
        max_size: Largest object side of the world.
    """

    def __init__(
        self,
        frame_size: int = DEFAULT_WORLD.frame_size,
        min_size: int = DEFAULT_WORLD.min_size,
        max_size: int = DEFAULT_WORLD.max_size,
    ) -> None:
        if not 3 <= min_size <= max_size <= frame_size - 2:
            raise ValueError(
                f"need 3 <= min_size <= max_size <= frame_size - 2, got {min_size}, {max_size}, {frame_size}"
            )
        self.frame_size = frame_size
        self.min_size, self.max_size = min_size, max_size
        _, log_prior = placement_log_prior(frame_size, min_size, max_size)
        self.log_prior = torch.from_numpy(log_prior)  # (P,)
        masks = np.stack([placement_masks(shape, frame_size, min_size, max_size) for shape in SHAPES])
        self.masks = torch.from_numpy(masks).flatten(2).double()  # (S, P, H*W): each shape at each placement
        # Index of each size's first placement (placements are ordered by size, then y, then x).
        per_size = (frame_size - torch.arange(min_size, max_size + 1) + 1) ** 2  # (sizes,)
        self.first_placement = torch.cumsum(per_size, 0) - per_size
        self.palette = torch.tensor([PALETTE[c] for c in COLOURS], dtype=torch.float64)  # (K, 3)

    def object_masks(self, layout: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H*W)`` float64 masks of each object of a layout ``(B, 2, 5)`` (zeros for absent ones).

        Raises:
            ValueError: For an object whose size or position is not one of this target's placements.
        """
        present = layout[..., 0] >= 0  # (B, 2)
        shape, side, x, y = (layout[..., column] for column in (1, 2, 3, 4))  # (B, 2) each
        limit = self.frame_size - side
        valid = (
            (side >= self.min_size)
            & (side <= self.max_size)
            & (x >= 0)
            & (y >= 0)
            & (x <= limit)
            & (y <= limit)
        )
        if bool((present & ~valid).any()):
            raise ValueError(
                f"a layout has objects outside this target's placements (sizes {self.min_size}-{self.max_size} "
                f"in a {self.frame_size}-px frame): build WorldPosteriorTarget with the data's world"
            )
        side = side.clamp(self.min_size, self.max_size)
        index = (
            self.first_placement[side - self.min_size]
            + y.clamp_min(0) * (self.frame_size - side + 1)
            + x.clamp_min(0)
        )
        masks = self.masks[shape.clamp_min(0), index]  # (B, 2, H*W)
        return masks * present[..., None]

    def __call__(
        self, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, batch: dict[str, Any]
    ) -> torch.Tensor:
        """The regression target for ``x0``: the posterior mean for laid-out single frames, else ``x0``.

        Args:
            x0: Clean latents ``(B, 3, F, H, W)`` (pixels).
            x_t: Noisy input ``(1 - sigma) x0 + sigma n``, same shape.
            sigma: Per-sample noise levels ``(B,)`` in ``(0, 1]``.
            batch: The training batch; ``"layout"`` ``(B, 2, 5)`` and ``"background"`` ``(B, 3)`` mark
                a batch of laid-out frames.

        Returns:
            The target, same shape and dtype as ``x0``.

        Raises:
            ValueError: For a laid-out batch that is not of one-frame ``3 x frame_size x frame_size``
                clips.
        """
        if "layout" not in batch:
            return x0
        size = self.frame_size
        if x0.shape[1:] != (3, 1, size, size):
            raise ValueError(
                f"WorldPosteriorTarget needs pixel latents of one-frame clips (B, 3, 1, {size}, {size}), "
                f"got {tuple(x0.shape)}"
            )
        layout = batch["layout"].cpu()
        masks = self.object_masks(layout)  # (B, 2, H*W)
        background = batch["background"].cpu().double()  # (B, 3)
        noisy = x_t.detach().cpu().double().reshape(x0.shape[0], 3, size * size)  # (B, 3, H*W)
        scale = (1.0 - sigma.detach().cpu().double()).clamp_min(0.0)[:, None]  # (B, 1)
        var = sigma.detach().cpu().double().clamp_min(1e-6).square()[:, None]  # (B, 1)
        present = layout[:, :, 0] >= 0  # (B, 2)
        total = torch.zeros_like(noisy)
        for free in range(2):
            estimate = self._free_object_mean(free, layout, masks, background, noisy, scale, var)
            total += estimate * present[:, free, None, None]
        target = total / present.sum(1).clamp_min(1)[:, None, None]  # (B, 3, H*W)
        return target.reshape(x0.shape).to(device=x0.device, dtype=x0.dtype)  # (B, 3, 1, H, W)

    def _free_object_mean(
        self,
        free: int,
        layout: torch.Tensor,
        masks: torch.Tensor,
        background: torch.Tensor,
        noisy: torch.Tensor,
        scale: torch.Tensor,
        var: torch.Tensor,
    ) -> torch.Tensor:
        """``E[x0 | x_t, everything but object `free`'s placement]`` ``(B, 3, H*W)`` (junk where it is absent).

        With the other object fixed, the frame at placement ``k`` of the free object is
        ``base + m_k * D``: ``base`` is the frame without the free object, ``D`` what covering a
        pixel with it changes (zero where the object in front hides it). The log-likelihood of
        ``k`` is then linear in ``m_k``, so all placements are scored by two matrix products.
        """
        other = 1 - free
        colour = self.palette[layout[:, free, 0].clamp_min(0)]  # (B, 3)
        other_colour = self.palette[layout[:, other, 0].clamp_min(0)]  # (B, 3)
        other_mask = masks[:, other, None, :]  # (B, 1, H*W)
        base = background[:, :, None] + other_mask * (other_colour - background)[:, :, None]  # (B, 3, H*W)
        # Object 0 is drawn in front: object 1's pixels show only where object 0 is absent.
        hidden = other_mask if free == 1 else torch.zeros_like(other_mask)  # (B, 1, H*W)
        change = (1.0 - hidden) * (colour[:, :, None] - base)  # (B, 3, H*W)
        residual = noisy - scale[:, :, None] * base  # (B, 3, H*W)
        linear = (residual * change).sum(1)  # (B, H*W)
        quadratic = change.square().sum(1)  # (B, H*W)
        # Score every shape's placements (a few small products) rather than gather a (B, P, H*W)
        # copy of each sample's candidates, then keep each sample's own shape.
        drive = 2.0 * scale * linear - scale.square() * quadratic  # (B, H*W)
        scores = torch.einsum("sph,bh->bsp", self.masks, drive)  # (B, S, P)
        shape = layout[:, free, 1].clamp_min(0)  # (B,)
        score = scores[torch.arange(len(shape)), shape]  # (B, P)
        weights = torch.softmax(score / (2.0 * var) + self.log_prior[None], dim=1)  # (B, P)
        per_shape = weights[:, None, :] * F.one_hot(shape, len(SHAPES)).to(weights)[:, :, None]  # (B, S, P)
        coverage = torch.einsum("bsp,sph->bh", per_shape, self.masks)  # (B, H*W)
        return base + coverage[:, None, :] * change  # (B, 3, H*W)
