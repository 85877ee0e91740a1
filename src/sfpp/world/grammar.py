"""The world's words: palette colours, shapes, backgrounds, the prompt grammar and its split.

Each video of the built-in world carries a prompt from a small grammar::

    a red circle bouncing on a dark background
    a red circle and a blue square bouncing on a slowly changing background

The first-named object is drawn in front. :func:`all_prompts` enumerates the grammar, and a fixed,
hash-chosen tenth of it (:func:`heldout_prompts`) is reserved for evaluation and never trained on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_PHRASES",
    "COLOURS",
    "HELDOUT_FRACTION",
    "PALETTE",
    "SHAPES",
    "VOCABULARY",
    "PromptContent",
    "all_prompts",
    "format_prompt",
    "heldout_prompts",
    "parse_prompt",
    "prompt_words",
    "train_prompts",
]

# -- the world's fixed ingredients ---------------------------------------------------------------

#: Saturated palette colours as RGB in ``[-1, 1]``; every channel is at an extreme.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "cyan": (-1.0, 1.0, 1.0),
    "magenta": (1.0, -1.0, 1.0),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Background kinds and the words the prompt uses for them.
BACKGROUNDS: tuple[str, ...] = ("dark", "changing")
BACKGROUND_PHRASES: dict[str, str] = {
    "dark": "dark background",
    "changing": "slowly changing background",
}
_GRAMMAR_WORDS: tuple[str, ...] = ("a", "and", "bouncing", "on")
#: Every word the grammar can produce, sorted.
VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        set(_GRAMMAR_WORDS)
        | set(COLOURS)
        | set(SHAPES)
        | {word for phrase in BACKGROUND_PHRASES.values() for word in phrase.split()}
    )
)

#: Fraction of the prompt set held out for evaluation.
HELDOUT_FRACTION: float = 0.1
_SPLIT_SALT: str = "sfpp-world-split-v1"

_EXAMPLE_PROMPT = "a red circle and a blue square bouncing on a slowly changing background"


@dataclass(frozen=True)
class PromptContent:
    """What a prompt says: ``(colour, shape)`` per object (front first) and the background kind."""

    objects: tuple[tuple[str, str], ...]
    background: str


# -- the prompt grammar --------------------------------------------------------------------------


def prompt_words(prompt: str) -> list[str]:
    """Split a prompt into vocabulary words: case-insensitive, punctuation ignored.

    Args:
        prompt: Any text; the empty prompt gives no words.

    Returns:
        The lower-case words in order.

    Raises:
        ValueError: If a word is not in :data:`VOCABULARY` (the message names it and lists the
            vocabulary).
    """
    words = re.sub(r"[^a-z]+", " ", prompt.lower()).split()
    for word in words:
        if word not in VOCABULARY:
            raise ValueError(
                f"word {word!r} of prompt {prompt!r} is not in the world's vocabulary {list(VOCABULARY)}"
            )
    return words


def format_prompt(objects: Sequence[tuple[str, str]], background: str) -> str:
    """The grammar's prompt for ``(colour, shape)`` objects on a background kind.

    Args:
        objects: ``(colour, shape)`` of each object, front to back as :func:`parse_prompt` reads them.
        background: One of :data:`BACKGROUNDS`.

    Returns:
        For example ``"a red circle and a blue square bouncing on a dark background"``.
    """
    phrase = " and ".join(f"a {colour} {shape}" for colour, shape in objects)
    return f"{phrase} bouncing on a {BACKGROUND_PHRASES[background]}"


class _WordReader:
    """Reads a prompt's words in grammar order, raising a clear error at the first mismatch."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.words = prompt_words(prompt)
        self.index = 0

    def peek(self) -> str | None:
        return self.words[self.index] if self.index < len(self.words) else None

    def take(self, allowed: Sequence[str]) -> str:
        word = self.peek()
        if word not in allowed:
            found = "the end of the prompt" if word is None else repr(word)
            raise ValueError(
                f"prompt {self.prompt!r} does not follow the world's grammar: expected one of "
                f"{list(allowed)} at word {self.index + 1}, found {found}; prompts look like "
                f"{_EXAMPLE_PROMPT!r}"
            )
        self.index += 1
        return word

    def finish(self) -> None:
        if self.peek() is not None:
            raise ValueError(
                f"prompt {self.prompt!r} has extra words after 'background': {self.words[self.index :]}"
            )


def parse_prompt(prompt: str) -> PromptContent:
    """Read the objects and background a prompt asks for.

    Args:
        prompt: A prompt of the grammar (case and punctuation are ignored).

    Returns:
        The prompt's content.

    Raises:
        ValueError: For unknown words, prompts outside the grammar, or repeated colours.
    """
    reader = _WordReader(prompt)
    objects = []
    while True:
        reader.take(["a"])
        colour = reader.take(COLOURS)
        shape = reader.take(SHAPES)
        objects.append((colour, shape))
        if reader.peek() != "and":
            break
        if len(objects) == 2:
            raise ValueError(f"prompt {prompt!r} names more than 2 objects; the world draws at most 2")
        reader.take(["and"])
    reader.take(["bouncing"])
    reader.take(["on"])
    reader.take(["a"])
    background = "dark" if reader.take(["dark", "slowly"]) == "dark" else "changing"
    if background == "changing":
        reader.take(["changing"])
    reader.take(["background"])
    reader.finish()
    colours = [colour for colour, _ in objects]
    if len(set(colours)) != len(colours):
        raise ValueError(f"prompt {prompt!r} repeats a colour; the objects of a video have distinct colours")
    return PromptContent(objects=tuple(objects), background=background)


def all_prompts(max_objects: int = 2) -> tuple[str, ...]:
    """Every prompt of the grammar with up to ``max_objects`` objects, sorted.

    With two objects: 6 colours x 3 shapes x 2 backgrounds = 36 one-object prompts plus
    ordered pairs of distinct colours (30) x shape pairs (9) x 2 backgrounds = 540 two-object ones.

    Raises:
        ValueError: If ``max_objects`` is not 1 or 2.
    """
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2 (the prompt grammar), got {max_objects}")
    singles = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    groups = list(singles)
    if max_objects == 2:
        groups += [
            f"a {c1} {s1} and a {c2} {s2}"
            for c1 in COLOURS
            for c2 in COLOURS
            if c1 != c2
            for s1 in SHAPES
            for s2 in SHAPES
        ]
    return tuple(sorted(f"{g} bouncing on a {BACKGROUND_PHRASES[b]}" for g in groups for b in BACKGROUNDS))


def _split_hash(prompt: str) -> float:
    """A stable hash of a prompt in ``[0, 1)`` (independent of the Python process)."""
    digest = hashlib.blake2b(f"{_SPLIT_SALT}:{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def heldout_prompts(max_objects: int = 2) -> tuple[str, ...]:
    """The evaluation prompts: about :data:`HELDOUT_FRACTION` of :func:`all_prompts`, never trained on.

    A prompt is held out when its salted hash falls below the fraction, so the split of a prompt
    does not depend on ``max_objects`` or on the process.
    """
    return tuple(p for p in all_prompts(max_objects) if _split_hash(p) < HELDOUT_FRACTION)


def train_prompts(max_objects: int = 2) -> tuple[str, ...]:
    """The training prompts: :func:`all_prompts` minus :func:`heldout_prompts`."""
    return tuple(p for p in all_prompts(max_objects) if _split_hash(p) >= HELDOUT_FRACTION)
