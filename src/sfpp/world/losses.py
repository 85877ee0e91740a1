"""A loss weighting for the built-in world's teacher: positions that stand out of the background count more.

Tried on the toy teacher and not kept in its recipe (the results page of the teacher has the
numbers); kept as a :class:`~sfpp.diffusion.training.LossWeighting` for experiments
(``stage.loss_weighting: {_target_: sfpp.world.losses.ForegroundWeighting, weight: 4.0}``).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["ForegroundWeighting", "foreground_weights"]


def foreground_weights(x0: Tensor, weight: float, tolerance: float = 0.05) -> Tensor:
    """Per-position loss weights that favour what stands out of a frame's background.

    The background of a frame is taken as its per-channel median (the built-in world's objects
    cover well under half of a frame on a plain or slowly varying background). A position whose
    channels differ from it by more than ``tolerance`` (largest absolute difference over channels)
    gets weight ``1 + weight``, every other position 1. Small objects then carry more of a
    squared-error loss than their share of the pixels, so their outlines (a circle's cut corners
    against a square's) are not drowned by the background.

    Args:
        x0: Clean samples ``(B, C, F, H, W)``.
        weight: Extra weight of a foreground position, ``>= 0`` (0 gives all ones).
        tolerance: Difference from the background median above which a position is foreground.

    Returns:
        Float32 weights ``(B, 1, F, H, W)``, broadcastable against ``x0``.

    Raises:
        ValueError: For a negative ``weight`` or ``tolerance``, or an ``x0`` that is not 5-D.
    """
    if weight < 0 or tolerance < 0:
        raise ValueError(f"foreground weight and tolerance must be >= 0, got {weight} and {tolerance}")
    if x0.ndim != 5:
        raise ValueError(f"x0 must be (B, C, F, H, W), got shape {tuple(x0.shape)}")
    x = x0.detach().float()
    background = x.flatten(3).median(dim=3).values  # (B, C, F, H * W) -> (B, C, F)
    distance = (x - background[..., None, None]).abs().amax(dim=1, keepdim=True)  # (B, 1, F, H, W)
    return 1.0 + weight * (distance > tolerance).float()


class ForegroundWeighting:
    """Each sample's loss is its squared error averaged with :func:`foreground_weights`.

    Args:
        weight: Extra weight of a foreground position, ``>= 0`` (0: the plain mean).
        tolerance: Difference from the frame's background median above which a position is foreground.

    Raises:
        ValueError: For a negative ``weight`` or ``tolerance``.
    """

    def __init__(self, weight: float, tolerance: float = 0.05) -> None:
        if not (weight >= 0 and tolerance >= 0):
            raise ValueError(
                f"foreground_weight must be >= 0 (and tolerance too), got {weight} and {tolerance}"
            )
        self.weight = float(weight)
        self.tolerance = float(tolerance)

    def __call__(self, squared_error: Tensor, x0: Tensor, sigma: Tensor, loss_space: str) -> Tensor:
        """The weighted mean per sample ``(B,)``; the weights are taken from the target ``x0``."""
        weights = foreground_weights(x0, self.weight, self.tolerance).expand_as(
            squared_error
        )  # (B, C, F, h, w)
        return (squared_error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)  # (B,)
