"""Write sample videos (mp4 + PNG frame grid) to the run directory and the loggers every N steps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.loggers import TensorBoardLogger

from sfpp.io.video import write_frame_grid, write_video

__all__ = ["VideoSampleCallback"]

log = logging.getLogger(__name__)


class VideoSampleCallback(L.Callback):
    """Sample fixed prompts with the stage's ``sample_videos`` and save what it draws.

    Files go to ``<output_dir>/samples/step_<N>_<i>.mp4`` and ``step_<N>.png``; the grid is also
    logged as an image to a TensorBoard logger when one is attached.

    Args:
        prompts: Prompts to sample (fixed, so samples are comparable across steps).
        num_frames: Latent frames per sample.
        frame_size: ``(height, width)`` of decoded frames.
        every_n_steps: Sampling period in optimisation steps; also samples at the end of training.
        output_dir: Where to write; defaults to the trainer's ``default_root_dir``.
        seed: Noise seed (same seed, same samples).
        fps: Frame rate of the mp4s.
        upscale: Nearest-neighbour upscaling of the written frames.
        flow: Also write the optical flow between consecutive frames, coloured with ``flow_vis``
            (:func:`sfpp.rewards.render_flow`), as ``step_<N>_<i>_flow.mp4`` and ``step_<N>_flow.png``
            (what the continuity reward of GRPO looks at).
    """

    def __init__(
        self,
        prompts: list[str],
        num_frames: int,
        frame_size: tuple[int, int],
        every_n_steps: int = 500,
        output_dir: str | None = None,
        seed: int = 0,
        fps: int = 8,
        upscale: int = 8,
        flow: bool = False,
    ) -> None:
        if not prompts:
            raise ValueError("VideoSampleCallback needs at least one prompt")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.prompts = list(prompts)
        self.num_frames = num_frames
        self.frame_size = tuple(frame_size)
        self.every_n_steps = every_n_steps
        self.output_dir = output_dir
        self.seed = seed
        self.fps = fps
        self.upscale = upscale
        self.flow = flow
        self._last_step = -1

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        was_training = pl_module.training
        pl_module.eval()
        # Every rank samples (a sharded model needs all of them); only rank 0 writes.
        videos = pl_module.sample_videos(self.prompts, self.num_frames, self.frame_size, seed=self.seed).cpu()
        pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        out = Path(self.output_dir or trainer.default_root_dir) / "samples"
        grid = write_frame_grid(out / f"step_{step:06d}.png", videos, upscale=self.upscale)
        for i, video in enumerate(videos):
            write_video(out / f"step_{step:06d}_{i}.mp4", video, fps=self.fps, upscale=self.upscale)
        if self.flow and videos.shape[2] >= 2:
            self._write_flow(out, step, videos)
        log.info("wrote samples of step %d to %s", step, grid)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples_grid", imageio.imread(grid), step, dataformats="HWC")

    def _write_flow(self, out: Path, step: int, videos: torch.Tensor) -> None:
        """Write the colour-coded flow of every video (mp4s and a grid)."""
        from sfpp.rewards import render_flow

        flows = []
        for i, video in enumerate(videos):
            colours = torch.from_numpy(render_flow(video)).float()  # (F - 1, H, W, 3) uint8 values
            flow_video = rearrange(colours, "f h w c -> c f h w") / 127.5 - 1.0  # in [-1, 1]
            write_video(out / f"step_{step:06d}_{i}_flow.mp4", flow_video, fps=self.fps, upscale=self.upscale)
            flows.append(flow_video)
        write_frame_grid(out / f"step_{step:06d}_flow.png", torch.stack(flows), upscale=self.upscale)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Sample every ``every_n_steps`` optimisation steps."""
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample the final model."""
        self._write(trainer, pl_module)
