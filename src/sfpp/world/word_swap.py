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

:func:`denoiser_word_choice` asks the same question more finely, with the denoiser as a classifier:
for each real clip, every word its first object could have (each colour, or each shape) is tried
on the same noisy inputs, and the word whose clean estimate is closest to the clip wins. A model
that reads a kind of word picks the true one; one that ignores it ties every word and scores 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sfpp.world.grammar import BACKGROUNDS, COLOURS, SHAPES, format_prompt, parse_prompt

__all__ = [
    "ATTRIBUTES",
    "denoiser_word_choice",
    "denoiser_word_use",
    "first_object_variants",
    "swap_attribute",
]

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
            :class:`~sfpp.world.objects.WorldObjectScore`), always given the true prompts.
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


def first_object_variants(prompt: str, attribute: str) -> tuple[list[str], int]:
    """Every valid prompt that differs from ``prompt`` only in the first object's colour or shape.

    Args:
        prompt: A prompt of the world's grammar.
        attribute: ``colour`` or ``shape``.

    Returns:
        The variants (the world's order of colours or shapes; a colour the other object already has
        is left out, so every variant is valid) and the index of ``prompt`` among them.

    Raises:
        ValueError: For another attribute or a prompt outside the grammar.
    """
    if attribute not in ("colour", "shape"):
        raise ValueError(f"attribute must be 'colour' or 'shape', got {attribute!r}")
    content = parse_prompt(prompt)
    (colour, shape), *others = content.objects
    taken = {other_colour for other_colour, _ in others}
    if attribute == "colour":
        firsts = [(option, shape) for option in COLOURS if option not in taken]
    else:
        firsts = [(colour, option) for option in SHAPES]
    variants = [format_prompt([first, *others], content.background) for first in firsts]
    return variants, firsts.index((colour, shape))


def denoiser_word_choice(
    denoise: Callable[[torch.Tensor, torch.Tensor, Sequence[str]], torch.Tensor],
    clips: torch.Tensor,
    prompts: Sequence[str],
    sigmas: Sequence[float],
    attribute: str,
    num_draws: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """How often the denoiser, used as a classifier, picks the true word of a kind for a real clip.

    Each clip is noised ``num_draws`` times at each level of ``sigmas``; for every variant of its
    prompt (:func:`first_object_variants`) the denoiser's clean estimate of those same noisy inputs
    is compared with the clip (mean squared error, summed over levels and draws). The variant with
    the lowest error is the model's choice; a tie is no choice.

    Args:
        denoise: ``denoise(x_t, sigma, prompts) -> x0`` estimate (conditional, no guidance), as for
            :func:`denoiser_word_use`.
        clips: Real clips of the prompts ``(B, 3, F, H, W)`` in ``[-1, 1]``.
        prompts: One world prompt per clip.
        sigmas: Noise levels in ``(0, 1)``.
        attribute: ``colour`` or ``shape`` (of each prompt's first object).
        num_draws: Noise draws per level.
        seed: Seed of the noise.

    Returns:
        ``accuracy``: fraction of clips whose true word has a strictly lower error than every other
        word (a model that ignores the words ties and scores 0; one that guesses scores one over
        the number of variants: 1/3 for shapes, 1/6 or 1/5 for colours); ``error_gap``: the mean,
        over clips, of (the true word's error minus the mean error of the other words) divided by
        the mean error of all words, negative when the true word explains the clip better.

    Raises:
        ValueError: For mismatched clips and prompts, a noise level outside ``(0, 1)`` or
            ``num_draws < 1``.
    """
    from sfpp.diffusion.schedule import add_noise

    if clips.shape[0] != len(prompts) or not prompts:
        raise ValueError(f"need one prompt per clip, got {len(prompts)} prompts for {clips.shape[0]} clips")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if any(not 0.0 < level < 1.0 for level in sigmas):
        raise ValueError(f"noise levels must be in (0, 1), got {list(sigmas)}")
    choices = [first_object_variants(prompt, attribute) for prompt in prompts]
    num_variants = max(len(variants) for variants, _ in choices)
    # Clips that have a variant number `index` (a two-object prompt has one colour fewer).
    rows_by_index = [
        [row for row, (variants, _) in enumerate(choices) if index < len(variants)]
        for index in range(num_variants)
    ]
    errors = torch.full((len(prompts), num_variants), float("inf"))  # (B, V); inf: no such variant
    for index, rows in enumerate(rows_by_index):
        errors[rows, index] = 0.0
    generator = torch.Generator().manual_seed(seed)
    for level in sigmas:
        sigma = torch.full((len(prompts),), float(level))  # (B,)
        for _ in range(num_draws):
            x_t = add_noise(clips, torch.randn(clips.shape, generator=generator), sigma)
            for index, rows in enumerate(rows_by_index):
                variant = [choices[row][0][index] for row in rows]
                estimate = denoise(x_t[rows], sigma[rows], variant)
                errors[rows, index] += (estimate.float() - clips[rows].float()).square().flatten(1).mean(1)
    truth = torch.tensor([true_index for _, true_index in choices])  # (B,)
    finite = torch.isfinite(errors)  # (B, V)
    true_error = errors.gather(1, truth[:, None]).squeeze(1)  # (B,)
    total, count = torch.where(finite, errors, 0.0).sum(1), finite.sum(1)  # (B,), (B,)
    all_mean = total / count  # (B,)
    others_mean = (total - true_error) / (count - 1)  # (B,)
    others_best = errors.scatter(1, truth[:, None], float("inf")).min(1).values  # (B,)
    return {
        "accuracy": float((true_error < others_best).float().mean()),
        "error_gap": float(((true_error - others_mean) / all_mean.clamp_min(1e-12)).mean()),
    }
