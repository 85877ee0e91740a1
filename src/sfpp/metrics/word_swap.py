"""Does a text-to-video model use each kind of word? Denoise real clips with one kind of word swapped.

For every prompt of the built-in world, :func:`swap_attribute` replaces every colour (or shape, or
the background) by another one of its kind, a fixed cyclic permutation, so the swapped prompt is
valid and names the same number of objects. :func:`denoiser_word_use` noises real clips of the
prompts to a few noise levels, asks the denoiser for the clean clip once with the true prompts and
once per swapped kind of word, and scores every estimate against the *true* prompts. Where the
noisy input leaves a property open (a shape is a blob at mid noise), a model that reads that kind of
word scores lower when it is swapped; a model that ignores it scores the same either way. Sampling
the model twice from the same noise does not answer this: any change of the conditioning moves a
sampled trajectory, so a swap changes the pixels whether or not the word was understood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sfpp.data.world import BACKGROUNDS, COLOURS, SHAPES, format_prompt, parse_prompt

__all__ = ["ATTRIBUTES", "denoiser_word_use", "swap_attribute"]

#: The kinds of words a world prompt is made of.
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "background")


def _next(options: tuple[str, ...], value: str) -> str:
    return options[(options.index(value) + 1) % len(options)]


def swap_attribute(prompt: str, attribute: str) -> str:
    """The prompt with every word of one kind replaced by the next of its kind (a cyclic permutation).

    Distinct colours stay distinct, so the result is always a valid prompt of the grammar.

    Args:
        prompt: A prompt of the world's grammar.
        attribute: One of :data:`ATTRIBUTES`.

    Returns:
        The swapped prompt, e.g. ``colour``: ``"a red circle ..."`` -> ``"a green circle ..."``.

    Raises:
        ValueError: For an unknown attribute or a prompt outside the grammar.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    content = parse_prompt(prompt)
    objects = list(content.objects)
    background = content.background
    if attribute == "colour":
        objects = [(_next(COLOURS, colour), shape) for colour, shape in objects]
    elif attribute == "shape":
        objects = [(colour, _next(SHAPES, shape)) for colour, shape in objects]
    else:
        background = _next(BACKGROUNDS, background)
    return format_prompt(objects, background)


def denoiser_word_use(
    denoise: Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor],
    clips: torch.Tensor,
    prompts: Sequence[str],
    sigmas: Sequence[float],
    score: Callable[[torch.Tensor, Sequence[str]], dict[str, float]],
    attributes: Sequence[str] = ATTRIBUTES,
    seed: int = 0,
) -> dict[float, dict[str, dict[str, float]]]:
    """Scores of the denoiser's clean estimates with the true prompts and with each kind of word swapped.

    Args:
        denoise: ``denoise(x_t, sigma, prompts) -> x0`` estimate, with ``x_t`` ``(B, 3, F, H, W)``
            and per-sample noise levels ``sigma`` ``(B,)`` (conditional, no guidance).
        clips: Real clips of the prompts ``(B, 3, F, H, W)`` in ``[-1, 1]``.
        prompts: One world prompt per clip.
        sigmas: Noise levels in ``(0, 1)`` to test.
        score: ``score(videos, prompts) -> {name: value}`` (e.g. a
            :class:`~sfpp.metrics.world_objects.WorldObjectScore`), always given the true prompts.
        attributes: Kinds of words to swap, from :data:`ATTRIBUTES`.
        seed: Seed of the noise (the same noise for every prompt variant of a level).

    Returns:
        ``{sigma: {"true" or attribute: scores}}``.

    Raises:
        ValueError: For mismatched clips and prompts, or a noise level outside ``(0, 1)``.
    """
    from sfpp.diffusion.schedule import add_noise

    if clips.shape[0] != len(prompts) or not prompts:
        raise ValueError(f"need one prompt per clip, got {len(prompts)} prompts for {clips.shape[0]} clips")
    variants = {"true": list(prompts)}
    variants |= {attribute: [swap_attribute(p, attribute) for p in prompts] for attribute in attributes}
    generator = torch.Generator().manual_seed(seed)
    result: dict[float, dict[str, dict[str, float]]] = {}
    for level in sigmas:
        if not 0.0 < level < 1.0:
            raise ValueError(f"noise levels must be in (0, 1), got {level}")
        sigma = torch.full((len(prompts),), float(level))  # (B,)
        x_t = add_noise(clips, torch.randn(clips.shape, generator=generator), sigma)
        result[float(level)] = {
            name: score(denoise(x_t, sigma, variant).clamp(-1, 1), prompts)
            for name, variant in variants.items()
        }
    return result
