"""The Bayes-optimal denoiser of one-object frames, and how far a model's denoiser is from it.

Given its background colour, a frame of the built-in world with one object on a plain background is
one of finitely many *templates*: a colour, a shape, a size and an integer position. For a noisy
frame ``x_t = (1 - sigma) x0 + sigma n`` the posterior over templates ``T_i`` is proportional to
``exp(-|x_t - (1 - sigma) T_i|^2 / (2 sigma^2))``, and the clean estimate with the least expected
squared error is the posterior mean. :func:`ideal_x0` computes it exactly; restricting the templates
to the prompt's colour and shape conditions it on the prompt.

:func:`denoiser_excess_error` noises real one-object clips on a dark background and compares a
model's clean estimate with the ideal one at each noise level. The ideal treats every frame on its
own, while a video model also sees the other frames of the clip, so the ideal's error is an upper
bound on the error the best video denoiser could reach: a model above it is certainly short of
optimal. The ideal is also run with the prompt's colour only, which measures what the shape word is
worth at each noise level.

:func:`shape_handover` asks where along its sampling trajectory a model decides an object's shape:
the model samples one-object clips down to a noise level, then the ideal denoiser that knows the
prompt's colour but not its shape finishes them. Whatever shape the finished clips have, the model's
trajectory had already drawn when it handed over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sfpp.diffusion.schedule import euler_step, flow_from_x0
from sfpp.utils.seeding import derive_seed
from sfpp.world.grammar import COLOURS, PALETTE, SHAPES, format_prompt
from sfpp.world.objects import WorldObjectScore
from sfpp.world.scene import DEFAULT_WORLD, WorldSpec, render, spec_from_prompt
from sfpp.world.targets import placement_masks

__all__ = [
    "ObjectTemplates",
    "OneObjectClips",
    "denoiser_excess_error",
    "ideal_x0",
    "object_templates",
    "one_object_clips",
    "shape_handover",
]

#: ``denoise(x_t, sigma, prompts) -> x0``: ``x_t`` ``(B, 3, F, H, W)``, ``sigma`` ``(B,)``.
Denoiser = Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class ObjectTemplates:
    """Every one-object frame of a world on one background.

    Attributes:
        frames: ``(N, 3, H, W)`` float32 in ``[-1, 1]``.
        colours: ``(N,)`` index into :data:`~sfpp.world.grammar.COLOURS`.
        shapes: ``(N,)`` index into :data:`~sfpp.world.grammar.SHAPES`.
    """

    frames: torch.Tensor
    colours: torch.Tensor
    shapes: torch.Tensor

    def allowed(self, colour: str, shape: str | None = None) -> torch.Tensor:
        """``(N,)`` bool: the templates of a colour (and a shape, when given)."""
        keep = self.colours == COLOURS.index(colour)
        if shape is not None:
            keep &= self.shapes == SHAPES.index(shape)
        return keep


def object_templates(background: Sequence[float], world: WorldSpec = DEFAULT_WORLD) -> ObjectTemplates:
    """All frames with one object (any colour, shape, size and integer position) on a plain background.

    Args:
        background: RGB of the background in ``[-1, 1]``.
        world: World settings (frame size, object sizes).

    Returns:
        The templates, ``len(COLOURS) * len(SHAPES) * sum over sizes of (frame - size + 1)^2`` of them.
    """
    per_shape = [placement_masks(shape, world.frame_size, world.min_size, world.max_size) for shape in SHAPES]
    masks = np.concatenate(per_shape)  # (M, H, W), shape by shape
    shapes = [index for index, frames in enumerate(per_shape) for _ in range(len(frames))]
    mask = torch.from_numpy(masks)[:, None]  # (M, 1, H, W)
    back = torch.tensor(background, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    frames = [torch.where(mask, torch.tensor(PALETTE[c])[:, None, None], back) for c in COLOURS]
    return ObjectTemplates(
        frames=torch.cat(frames).float(),  # (len(COLOURS) * M, 3, H, W)
        colours=torch.arange(len(COLOURS)).repeat_interleave(len(masks)),
        shapes=torch.tensor(shapes).repeat(len(COLOURS)),
    )


def ideal_x0(x_t: torch.Tensor, sigma: float, templates: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Posterior mean of the clean frame under a uniform prior over the allowed templates.

    Args:
        x_t: Noisy frames ``(K, 3, H, W)``.
        sigma: Noise level in ``(0, 1)``.
        templates: ``(N, 3, H, W)``.
        allowed: ``(N,)`` bool, the templates the prior puts its mass on (at least one).

    Returns:
        ``(K, 3, H, W)``: the least-squares clean estimate.

    Raises:
        ValueError: For a sigma outside ``(0, 1)`` or no allowed template.
    """
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"sigma must lie in (0, 1), got {sigma}")
    if not bool(allowed.any()):
        raise ValueError("no template is allowed")
    flat = templates[allowed].flatten(1).double()  # (N', D)
    noisy = x_t.flatten(1).double()  # (K, D)
    scaled = (1.0 - sigma) * flat
    distance = (
        noisy.square().sum(1, keepdim=True) - 2.0 * noisy @ scaled.T + scaled.square().sum(1)[None]
    )  # (K, N') squared distances
    weights = torch.softmax(-distance / (2.0 * sigma**2), dim=1)  # (K, N')
    return (weights @ flat).float().reshape(x_t.shape)  # (K, 3, H, W)


@dataclass(frozen=True)
class OneObjectClips:
    """Real one-object clips on a dark background, with what the ideal denoiser needs to know.

    Attributes:
        clips: ``(B, 3, F, H, W)`` float32 in ``[-1, 1]``.
        prompts: One prompt per clip.
        pairs: ``(colour, shape)`` per clip.
        templates: The templates of each clip's background.
    """

    clips: torch.Tensor
    prompts: list[str]
    pairs: list[tuple[str, str]]
    templates: list[ObjectTemplates]

    def ideal(self, x_t: torch.Tensor, sigma: float, use_shape: bool = True) -> torch.Tensor:
        """The ideal clean estimate of noisy versions ``(B, 3, F, H, W)`` of these clips, frame by frame.

        Args:
            x_t: Noisy clips.
            sigma: Their noise level.
            use_shape: Condition on the prompt's shape as well as its colour.
        """
        out = torch.empty_like(x_t)
        for index, ((colour, shape), bank) in enumerate(zip(self.pairs, self.templates, strict=True)):
            frames = x_t[index].transpose(0, 1)  # (3, F, H, W) -> (F, 3, H, W)
            keep = bank.allowed(colour, shape if use_shape else None)
            out[index] = ideal_x0(frames, sigma, bank.frames, keep).transpose(0, 1)  # (3, F, H, W)
        return out

    def denoiser(self, use_shape: bool = True) -> Denoiser:
        """The ideal as a ``denoise(x_t, sigma, prompts)`` callable for these clips' prompts.

        At sigma 1 the noisy clip says nothing and the estimate is the prior mean: the average of the
        allowed templates. Every call takes one noise level for the whole batch.

        Args:
            use_shape: Condition on the prompt's shape as well as its colour.

        Raises:
            ValueError: (from the callable) for other prompts than these clips' or mixed noise levels.
        """

        def denoise(x_t: torch.Tensor, sigma: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
            if list(prompts) != self.prompts:
                raise ValueError("the ideal denoiser knows these clips' prompts only")
            level = float(sigma.flatten()[0])
            if not bool((sigma == level).all()):
                raise ValueError(f"the ideal takes one noise level per call, got {sigma.tolist()}")
            if level < 1.0:
                return self.ideal(x_t, level, use_shape)
            means = [
                bank.frames[bank.allowed(colour, shape if use_shape else None)].mean(0)
                for (colour, shape), bank in zip(self.pairs, self.templates, strict=True)
            ]  # B x (3, H, W)
            return torch.stack(means)[:, :, None].expand_as(x_t).clone()  # (B, 3, F, H, W)

        return denoise


def one_object_clips(
    num_clips: int, num_frames: int, world: WorldSpec = DEFAULT_WORLD, seed: int = 0
) -> OneObjectClips:
    """Clips of one object on a dark background; clip ``i`` shows ``COLOURS[i % 6]``, ``SHAPES[(i // 6) % 3]``.

    Eighteen clips cover every colour and shape once.

    Raises:
        ValueError: For no clips.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    pairs = [(COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]) for i in range(num_clips)]
    prompts = [format_prompt([pair], "dark") for pair in pairs]
    specs = [spec_from_prompt(p, derive_seed(seed, i), world) for i, p in enumerate(prompts)]
    return OneObjectClips(
        clips=torch.stack([torch.from_numpy(render(spec, num_frames)) for spec in specs]),  # (B, 3, F, H, W)
        prompts=prompts,
        pairs=pairs,
        templates=[object_templates(spec.background.base, world) for spec in specs],
    )


def denoiser_excess_error(
    denoise: Denoiser,
    sigmas: Sequence[float],
    num_clips: int = 18,
    num_frames: int = 8,
    world: WorldSpec = DEFAULT_WORLD,
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """Clean-estimate error of a denoiser next to the ideal's, on one-object dark-background clips.

    The clips are :func:`one_object_clips`. Each noise level draws its own seeded noise; the model
    and the ideals see the same noisy clips. One object pixel wrong in every frame costs about
    0.0045 (a palette colour is ~1.85 from the background in one channel or more, over 768 values).

    Args:
        denoise: The model's clean estimate ``denoise(x_t, sigma, prompts)``.
        sigmas: Noise levels in ``(0, 1)``.
        num_clips: Clips scored.
        num_frames: Frames per clip (the model's horizon).
        world: World settings.
        seed: Seed of the scenes and the noise.

    Returns:
        ``{sigma: {"model": mse, "ideal": mse, "ideal_colour_only": mse, "excess": model - ideal}}``,
        mean squared errors per value against the real clips.

    Raises:
        ValueError: For no clips or a sigma outside ``(0, 1)``.
    """
    for sigma in sigmas:
        if not 0.0 < float(sigma) < 1.0:
            raise ValueError(f"sigmas must lie in (0, 1), got {sigma}")
    data = one_object_clips(num_clips, num_frames, world, seed)
    results: dict[float, dict[str, float]] = {}
    for level, sigma in enumerate(float(s) for s in sigmas):
        generator = torch.Generator().manual_seed(derive_seed(seed, 1, level))
        x_t = (1.0 - sigma) * data.clips + sigma * torch.randn(data.clips.shape, generator=generator)
        with torch.no_grad():
            estimate = denoise(x_t, torch.full((num_clips,), sigma), data.prompts).float()
        estimates = {
            "model": estimate,
            "ideal": data.ideal(x_t, sigma),
            "ideal_colour_only": data.ideal(x_t, sigma, use_shape=False),
        }
        errors = {name: float((value - data.clips).square().mean()) for name, value in estimates.items()}
        errors["excess"] = errors["model"] - errors["ideal"]
        results[sigma] = errors
    return results


def shape_handover(
    denoise: Denoiser,
    grid: Sequence[float],
    handover_sigmas: Sequence[float],
    num_clips: int = 18,
    num_frames: int = 8,
    world: WorldSpec = DEFAULT_WORLD,
    seed: int = 0,
) -> dict[float, dict[str, float]]:
    """Object scores of one-object clips that the model samples down to a noise level and the ideal finishes.

    The model integrates the Euler ODE over ``grid`` from seeded noise with the prompts of
    :func:`one_object_clips`. At every grid level at or below a handover sigma, the clean estimate
    is the ideal one given the prompt's colour only (:meth:`OneObjectClips.ideal` with
    ``use_shape=False``), so the shape the finished clips show was decided by the model above that
    level. Handover ``0`` is the model alone. A model that reads the shape word keeps its shape
    accuracy when it hands over at middle noise levels; one that draws an undecided blob falls to
    the accuracy of a shape-blind finish (about chance).

    One model trajectory serves every handover: each branches off it at its level.

    Args:
        denoise: The model's clean estimate ``denoise(x_t, sigma, prompts)``, with the guidance the
            model samples with (:meth:`~sfpp.world.teacher_sampler.TeacherClipSampler.guided_denoise`);
            ``one_object_clips(...).denoiser()`` is the ideal's own, the reference.
        grid: Decreasing noise levels from 1 to 0, the sampler's integration grid
            (:meth:`~sfpp.diffusion.sampling.EulerSampler.grid`).
        handover_sigmas: Levels in ``[0, 1)`` at which the ideal takes over.
        num_clips: Clips sampled (18 cover every colour and shape once).
        num_frames: Frames per clip (the model's horizon).
        world: World settings.
        seed: Seed of the noise (and of the scenes whose backgrounds the ideal uses).

    Returns:
        ``{handover: {"clean_frame_fraction", "detected_fraction", "shape_accuracy"}}`` scored by
        :class:`~sfpp.world.objects.WorldObjectScore` against the prompts.

    Raises:
        ValueError: For a grid that does not run from 1 down to 0, no handover level, a handover
            outside ``[0, 1)`` or no clips.
    """
    levels = [float(s) for s in grid]
    if (
        len(levels) < 2
        or levels[0] != 1.0
        or levels[-1] != 0.0
        or any(b >= a for a, b in zip(levels[:-1], levels[1:], strict=True))
    ):
        raise ValueError(f"grid must decrease strictly from 1 to 0, got {levels}")
    if not handover_sigmas:
        raise ValueError("give at least one handover sigma (0 scores the model alone)")
    for sigma in handover_sigmas:
        if not 0.0 <= float(sigma) < 1.0:
            raise ValueError(f"handover sigmas must lie in [0, 1), got {sigma}")
    data = one_object_clips(num_clips, num_frames, world, seed)
    metric = WorldObjectScore(world=world)
    keys = ("clean_frame_fraction", "detected_fraction", "shape_accuracy")

    def finish(x: torch.Tensor, start: int) -> dict[str, float]:
        for sigma, sigma_next in zip(levels[start:-1], levels[start + 1 :], strict=True):
            x0 = data.ideal(x, sigma, use_shape=False)
            x = euler_step(x, flow_from_x0(x0, x, sigma), sigma, sigma_next)
        scores = metric(x.clamp(-1.0, 1.0), data.prompts)
        return {key: float(scores[key]) for key in keys}

    pending = sorted({float(s) for s in handover_sigmas}, reverse=True)
    results: dict[float, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(derive_seed(seed, 2))
    x = torch.randn(data.clips.shape, generator=generator)  # (B, 3, F, H, W)
    with torch.no_grad():
        for step, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
            while pending and sigma <= pending[0]:
                results[pending.pop(0)] = finish(x, step)
            x0 = denoise(x, torch.full((num_clips,), sigma), data.prompts).float()
            x = euler_step(x, flow_from_x0(x0, x, sigma), sigma, sigma_next)
        for handover in pending:  # only 0: the model went all the way
            results[handover] = finish(x, len(levels) - 1)
    return {float(s): results[float(s)] for s in handover_sigmas}
