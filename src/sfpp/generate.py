r"""Long-video generation entry point: ``python -m sfpp.generate [overrides]``.

Composes ``conf/generate.yaml``, loads the student from ``checkpoint`` (under ``prefix``), the text
encoder and the codec, and streams one video per prompt into ``out_dir`` (mp4 + JSON), e.g.::

    python -m sfpp.generate checkpoint=checkpoints/toy_extend/last.ckpt \
        teacher_ckpt=checkpoints/toy_teacher/last.ckpt \
        prompt="a red circle bouncing on a dark background" length=60s

From Python (a notebook)::

    from sfpp.generate import generate_video, load_generator

    generator = load_generator("checkpoints/toy_extend/last.ckpt", teacher_ckpt="checkpoints/toy_teacher/last.ckpt")
    [result] = generate_video(generator, "a red circle bouncing on a dark background", "60s", "outputs/videos")
    result.video_path, result.metrics

To continue a clip or animate an image, give ``init_video=clip.mp4`` or ``init_image=frame.png``
(frames of the student's ``frame_size``, or a whole multiple of it as sfpp's own videos are): the
frames are encoded, written into the rolling cache as finished chunks, and ``length`` more is
generated after them (:mod:`sfpp.inference.prefix`)::

    python -m sfpp.generate checkpoint=... prompt="a red circle bouncing on a dark background" \
        init_video=outputs/videos/000_a_red_circle_bouncing_on_a_dark_background_seed0.mp4 length=10s

Every request is checked before the first frame is generated: a missing checkpoint, no prompt or
an empty prompts file, a length past the model's RoPE table, a bad switch, a word the text encoder
does not know, a given file that is missing, unreadable or of another frame size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sfpp.data.prompts import read_prompts
from sfpp.inference.generator import ChunkInfo, GenerationResult, VideoGenerator
from sfpp.inference.prefix import IMAGE_SUFFIXES, VideoPrefix, encode_prefix, fit_frames, read_frames
from sfpp.stages.checkpoints import load_submodule
from sfpp.utils.cli import quiet_known_warnings, take_debug_flag, user_errors
from sfpp.utils.config_dir import find_config_dir

__all__ = [
    "build_generator",
    "compose_config",
    "generate",
    "generate_video",
    "load_generator",
    "load_prefix",
    "main",
    "request_frames",
    "request_prompts",
    "video_name",
]

log = logging.getLogger(__name__)


def video_name(index: int, prompt: str, seed: int, max_chars: int = 60) -> str:
    """File stem of a video: ``"000_a_red_circle_bouncing_on_a_dark_background_seed0"``.

    Args:
        index: Position of the prompt in the request.
        prompt: The (first) prompt.
        seed: The seed.
        max_chars: Longest prompt part.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:max_chars].rstrip("_") or "prompt"
    return f"{index:03d}_{slug}_seed{seed}"


def generate_video(
    generator: VideoGenerator,
    prompts: str | Sequence[str],
    length: int | str,
    out_dir: str | Path,
    seed: int = 0,
    switches: Sequence[str] = (),
    on_chunk: Callable[[ChunkInfo], None] | None = None,
    prefix: VideoPrefix | None = None,
) -> list[GenerationResult]:
    """Generate one video per prompt into ``out_dir`` (see :func:`video_name` for the file names).

    Every request is planned (checked, prompts encoded) before the first video starts.

    Args:
        generator: The student and the inference settings.
        prompts: One prompt or several.
        length: Latent frames (``200``) or seconds (``"60s"``).
        out_dir: Directory of the mp4s and JSONs.
        seed: Seed of every video.
        switches: ``"<time>:<prompt>"`` switches applied to every video.
        on_chunk: Called after every chunk (see :class:`~sfpp.inference.generator.ChunkInfo`).
        prefix: Given frames every video starts from and continues (:func:`load_prefix`); ``length``
            is then what is generated after them.

    Returns:
        One :class:`~sfpp.inference.generator.GenerationResult` per prompt.

    Raises:
        ValueError: For an empty prompt list or a request that cannot be generated.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompt to generate: give `prompt` or a `prompts_file` with at least one prompt")
    plans = [generator.plan(prompt, length, switches, prefix) for prompt in prompts]
    results = []
    for index, plan in enumerate(plans):
        path = Path(out_dir) / f"{video_name(index, plan.prompt, seed)}.mp4"
        description = f"video {index + 1}/{len(plans)}"
        result = generator.run(plan, path, seed=seed, on_chunk=on_chunk, description=description)
        summary = result.summary
        log.info(
            "%s: %d frames (%.1f s of video) in %.1f s, %.1f frames/s; metrics %s",
            path,
            summary["frames_written"],
            summary["duration_seconds"],
            summary["seconds_taken"],
            summary["generation_frames_per_second"],
            {
                key: value if value is None else round(value, 4)
                for key, value in summary.get("metrics", {}).items()
            },
        )
        results.append(result)
    return results


def _require_file(path: Any, setting: str) -> Path:
    """The path of a file that must exist, or an error naming the setting and the path."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{setting}={file} does not exist; train the stage that writes it or fix the path"
        )
    return file


def request_prompts(cfg: DictConfig) -> list[str]:
    """The prompts of a ``generate`` config: ``prompt`` or the lines of ``prompts_file``.

    Raises:
        ValueError: Unless exactly one of them is given, or if the file holds no prompt.
        FileNotFoundError: If ``prompts_file`` does not exist.
    """
    prompt, prompts_file = cfg.get("prompt"), cfg.get("prompts_file")
    if (prompt is None) == (prompts_file is None):
        raise ValueError(
            'give exactly one of prompt="..." and prompts_file=<file with one prompt per line>, '
            f"got prompt={prompt!r}, prompts_file={prompts_file!r}"
        )
    if prompts_file is not None:
        return read_prompts(prompts_file, setting="prompts_file")
    if not str(prompt).strip():
        raise ValueError('prompt is empty; give prompt="<text>"')
    return [str(prompt)]


def build_generator(cfg: DictConfig) -> VideoGenerator:
    """Load the student, text encoder, codec and metrics of a ``generate`` config.

    Raises:
        FileNotFoundError: If ``checkpoint`` (or the text encoder's checkpoint) does not exist.
        ValueError: If ``checkpoint`` is unset or holds nothing under ``prefix``, or the student's
            saved text encoder differs from the one in the text encoder's checkpoint.
    """
    if OmegaConf.is_missing(cfg, "checkpoint") or cfg.checkpoint is None:
        raise ValueError("set checkpoint=<student .ckpt>, e.g. checkpoint=checkpoints/toy_extend/last.ckpt")
    checkpoint = _require_file(cfg.checkpoint, "checkpoint")
    text_checkpoint = cfg.text.get("checkpoint") if "text" in cfg else None
    if text_checkpoint is not None:
        _require_file(text_checkpoint, "text.checkpoint (teacher_ckpt)")
    # A student only understands the text encoder it was trained with: refuse a teacher retrained since.
    model = load_submodule(
        hydra.utils.instantiate(cfg.model), checkpoint, cfg.prefix, shared_with=text_checkpoint
    )
    metrics = {
        name: hydra.utils.instantiate(node) for name, node in (cfg.get("metrics") or {}).items() if node
    }
    return VideoGenerator(
        model=model,
        text_encoder=hydra.utils.instantiate(cfg.text),
        codec=hydra.utils.instantiate(cfg.codec),
        sampler=hydra.utils.instantiate(cfg.sampler),
        frame_size=tuple(cfg.frame_size),
        cache_window_frames=cfg.cache_window_frames,
        sink_frames=cfg.sink_frames,
        fps=cfg.fps,
        upscale=cfg.upscale,
        metrics=metrics,
        max_metric_frames=cfg.max_metric_frames,
        metric_max_side=cfg.metric_max_side,
        device=cfg.device,
        dtype=cfg.dtype,
        checkpoint=f"{checkpoint} ({cfg.prefix})",
        show_progress=cfg.progress,
    )


def request_frames(cfg: DictConfig) -> tuple[str, torch.Tensor] | None:
    """The given frames of a ``generate`` config (``init_video`` or ``init_image``), at its frame size.

    Returns:
        ``(source, frames (3, F, H, W))`` with ``source`` as ``"<setting>=<path>"``, or ``None``
        when neither is set.

    Raises:
        ValueError: If both are set, ``init_image`` is not an image, or the frames do not fit ``frame_size``.
        FileNotFoundError: If the file does not exist.
    """
    video, image = cfg.get("init_video"), cfg.get("init_image")
    if video is not None and image is not None:
        raise ValueError(
            f"give at most one of init_video and init_image, got init_video={video}, init_image={image}"
        )
    if video is None and image is None:
        return None
    setting, path = ("init_video", video) if video is not None else ("init_image", image)
    if setting == "init_image" and Path(str(path)).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"init_image={path} is not an image {IMAGE_SUFFIXES}; give a clip as init_video")
    source = f"{setting}={path}"
    frames = fit_frames(read_frames(path, setting), tuple(cfg.frame_size), source)
    return source, frames


def load_prefix(
    generator: VideoGenerator, frames: torch.Tensor, source: str, in_first_chunk: bool = False
) -> VideoPrefix:
    """Encode given frames ``(3, F, H, W)`` with the generator's codec (a notebook's way in).

    Whole chunks written into the cache, or with ``in_first_chunk`` the latent frames that
    condition the first chunk (Wan2.2-TI2V's image conditioning; :func:`sfpp.inference.prefix.encode_prefix`).
    """
    return encode_prefix(
        generator.codec,
        frames,
        generator.model.config.num_frames_per_chunk,
        source,
        device=generator.device,
        in_first_chunk=in_first_chunk,
    )


def generate(cfg: DictConfig, on_chunk: Callable[[ChunkInfo], None] | None = None) -> list[GenerationResult]:
    """Run a composed ``generate`` config: the body of ``python -m sfpp.generate``.

    Args:
        cfg: The composed config.
        on_chunk: Called after every chunk (tests, progress hooks).

    Returns:
        One result per prompt.
    """
    prompts = request_prompts(cfg)  # before loading anything: a bad request fails at once
    given = request_frames(cfg)
    generator = build_generator(cfg)
    in_chunk = bool(cfg.get("prefix_in_first_chunk", False))
    prefix = None if given is None else load_prefix(generator, given[1], given[0], in_first_chunk=in_chunk)
    switches = list(cfg.get("switch") or [])
    return generate_video(generator, prompts, cfg.length, cfg.out_dir, cfg.seed, switches, on_chunk, prefix)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/generate.yaml`` with command-line style overrides, outside a Hydra app.

    Args:
        overrides: E.g. ``["checkpoint=...", "length=30s", "device=cpu"]``.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(find_config_dir()), job_name="generate"):
        return compose(config_name="generate", overrides=list(overrides))


def load_generator(checkpoint: str | Path, overrides: Sequence[str] = (), **settings: Any) -> VideoGenerator:
    """A :class:`VideoGenerator` from a checkpoint and the ``generate`` config, for notebooks.

    Args:
        checkpoint: The student's Lightning checkpoint.
        overrides: Hydra overrides of ``conf/generate.yaml`` (``["model=wan_1_3b", ...]``).
        **settings: Top-level settings as keyword arguments (``teacher_ckpt=...``, ``fps=16``).
    """
    settings_overrides = [f"{key}={_override_value(value)}" for key, value in settings.items()]
    cfg = compose_config([f"checkpoint={_override_value(checkpoint)}", *settings_overrides, *overrides])
    return build_generator(cfg)


def _override_value(value: Any) -> str:
    """A Python value as the right-hand side of a Hydra override (strings quoted)."""
    if isinstance(value, str | Path):
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def main() -> None:
    """Parse the command line with Hydra and run :func:`generate`."""
    quiet_known_warnings()
    take_debug_flag()
    hydra_main = hydra.main(version_base="1.3", config_path=str(find_config_dir()), config_name="generate")
    hydra_main(user_errors(generate))()


if __name__ == "__main__":
    main()
