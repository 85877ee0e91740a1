"""LightningDataModule serving clips of the built-in world (:mod:`sfpp.world`).

Training draws from the training prompts only, validation cycles through the held-out prompts.
Every item is a pure function of ``(seed, split, index)``, so the same seed gives the same batches
in any process and with any number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from sfpp.data.resumable import ResumableDataLoader
from sfpp.utils.seeding import derive_seed
from sfpp.world.grammar import heldout_prompts, train_prompts
from sfpp.world.scene import WorldSpec, frame_layout, prompt_of, render, sample_spec, spec_from_prompt

__all__ = ["ImagesThenVideos", "WorldDataModule", "WorldVideoDataset"]

_TRAIN_STREAM = 0
_VAL_STREAM = 1
_IMAGE_STREAM = 2


class WorldVideoDataset(Dataset):
    """A map-style dataset of world clips; item ``i`` is rendered from a seed derived from ``(seed, stream, i)``.

    Args:
        world: World settings.
        prompts: Prompts the videos are drawn from.
        num_frames: Frames per clip.
        length: Number of items (a virtual epoch for training).
        seed: Base seed.
        stream: Distinguishes datasets sharing a base seed (training vs validation).
        cycle_prompts: If true, item ``i`` uses ``prompts[i % len(prompts)]`` (fixed evaluation
            prompts); otherwise the prompt is drawn with :func:`~sfpp.world.scene.sample_spec`.
        with_layout: One-frame items also carry what the frame is made of (see
            :func:`~sfpp.world.scene.frame_layout`): ``"layout"`` ``(2, 5)`` int64 and
            ``"background"`` ``(3,)`` float32, which exact regression targets need
            (:class:`~sfpp.world.targets.WorldPosteriorTarget`).

    Raises:
        ValueError: For an empty prompt list, non-positive sizes, or ``with_layout`` on clips of
            more than one frame.
    """

    def __init__(
        self,
        world: WorldSpec,
        prompts: Sequence[str],
        num_frames: int,
        length: int,
        seed: int,
        stream: int,
        cycle_prompts: bool = False,
        with_layout: bool = False,
    ) -> None:
        if not prompts:
            raise ValueError("WorldVideoDataset needs at least one prompt")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if length < 1:
            raise ValueError(f"dataset length must be >= 1, got {length}")
        if with_layout and num_frames != 1:
            raise ValueError(f"with_layout describes one frame; got num_frames={num_frames}")
        self.world = world
        self.prompts = tuple(prompts)
        self.num_frames = num_frames
        self.length = length
        self.seed = seed
        self.stream = stream
        self.cycle_prompts = cycle_prompts
        self.with_layout = with_layout

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Render item ``index`` as ``{"video": (C, F, H, W) float32 in [-1, 1], "prompt": str}``.

        With ``with_layout`` the item also has ``"layout"`` and ``"background"`` (see the class).
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        video_seed = derive_seed(self.seed, self.stream, index)
        if self.cycle_prompts:
            spec = spec_from_prompt(self.prompts[index % len(self.prompts)], video_seed, self.world)
        else:
            spec = sample_spec(video_seed, self.world, self.prompts)
        video = torch.from_numpy(render(spec, self.num_frames))  # (C, F, H, W)
        item = {"video": video, "prompt": prompt_of(spec)}
        if self.with_layout:
            layout, background = frame_layout(spec)
            item["layout"] = torch.from_numpy(layout)
            item["background"] = torch.from_numpy(background)
        return item


class ImagesThenVideos(Dataset):
    """Whole training batches: single-frame image batches first, then video batches.

    Item ``i < image_batches`` is a batch of ``image_batch_size`` one-frame clips; item
    ``image_batches + j`` is video batch ``j``, the items ``j * batch_size ...`` of ``videos``.
    Without image batches the video batches are exactly those of a plain sequential loader over
    ``videos``. Each item depends only on its index, so a resumed run continues where it stopped.

    Args:
        videos: The training clips.
        images: One-frame clips (a dataset with ``num_frames=1``).
        batch_size: Clips per video batch.
        image_batch_size: Images per image batch.
        image_batches: Number of image batches served before the first video batch.

    Raises:
        ValueError: For non-positive sizes, or an image dataset too short for the image batches.
    """

    def __init__(
        self,
        videos: WorldVideoDataset,
        images: WorldVideoDataset,
        batch_size: int,
        image_batch_size: int,
        image_batches: int,
    ) -> None:
        if batch_size < 1 or image_batch_size < 1 or image_batches < 0:
            raise ValueError(
                f"need batch_size >= 1, image_batch_size >= 1 and image_batches >= 0, got "
                f"{batch_size}, {image_batch_size} and {image_batches}"
            )
        if images.num_frames != 1:
            raise ValueError(f"image batches need a one-frame dataset, got num_frames={images.num_frames}")
        if len(images) < image_batches * image_batch_size:
            raise ValueError(
                f"{image_batches} image batches of {image_batch_size} need {image_batches * image_batch_size} "
                f"images; the image dataset has {len(images)}"
            )
        self.videos = videos
        self.images = images
        self.batch_size = batch_size
        self.image_batch_size = image_batch_size
        self.image_batches = image_batches

    def __len__(self) -> int:
        return self.image_batches + len(self.videos) // self.batch_size

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Batch ``index`` as ``{"video": (B, 3, F, H, W), "prompt": list[str]}`` (``F = 1`` for images).

        Image batches carry whatever else the image dataset's items have (the layout of each frame
        when it was built ``with_layout``), stacked over the batch.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        if index < self.image_batches:
            dataset, size, first = self.images, self.image_batch_size, index * self.image_batch_size
        else:
            dataset, size = self.videos, self.batch_size
            first = (index - self.image_batches) * self.batch_size
        return default_collate([dataset[first + offset] for offset in range(size)])


def _only_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for a loader whose items are whole batches (batch size 1)."""
    return items[0]


class WorldDataModule(L.LightningDataModule):
    """Clips of the built-in world for training (training prompts) and validation (held-out prompts).

    Batches are ``{"video": (B, 3, F, H, W) float32 in [-1, 1], "prompt": list[str]}``. The training
    loader is sequential over a virtual epoch of ``train_size`` distinct random videos (no
    shuffling is needed: every index is an independent draw), the validation loader cycles through
    the held-out prompts with fixed seeds.

    With ``image_batches > 0`` training starts with that many batches of single frames
    (``image_batch_size`` each, from their own seed stream) before the video batches (why:
    "Images before videos" in ``docs/concepts.md``). Image batches also carry each frame's
    ``"layout"`` ``(B, 2, 5)`` and ``"background"`` ``(B, 3)`` (:func:`~sfpp.world.scene.frame_layout`),
    from which :class:`~sfpp.world.targets.WorldPosteriorTarget` computes exact targets.

    Args:
        num_frames: Frames per clip (the teacher horizon).
        batch_size: Clips per batch.
        frame_size: Frame side in pixels.
        max_objects: Largest number of objects per video (1 or 2).
        num_workers: DataLoader worker processes.
        seed: Base seed of every video.
        train_size: Length of the virtual training epoch.
        val_size: Number of validation clips.
        min_object_size: Smallest object side in pixels.
        max_object_size: Largest object side in pixels.
        image_batch_size: Frames per image batch.
        image_batches: Image batches served before the first video batch (0: videos only).

    Raises:
        ValueError: For impossible settings, naming the setting.
    """

    def __init__(
        self,
        num_frames: int = 8,
        batch_size: int = 32,
        frame_size: int = 16,
        max_objects: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int = 1_000_000,
        val_size: int = 64,
        min_object_size: int = 5,
        max_object_size: int = 7,
        image_batch_size: int = 16,
        image_batches: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_frames", num_frames),
            ("batch_size", batch_size),
            ("train_size", train_size),
            ("val_size", val_size),
            ("image_batch_size", image_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if image_batches < 0:
            raise ValueError(f"image_batches must be >= 0, got {image_batches}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.save_hyperparameters()
        self.world = WorldSpec(
            frame_size=frame_size,
            max_objects=max_objects,
            min_size=min_object_size,
            max_size=max_object_size,
        )
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.image_batch_size = image_batch_size
        self.image_batches = image_batches
        self.num_workers = num_workers
        self.seed = seed
        self.train_prompts = train_prompts(max_objects)
        self.val_prompts = heldout_prompts(max_objects)
        self.train_dataset = WorldVideoDataset(
            self.world, self.train_prompts, num_frames, train_size, seed, _TRAIN_STREAM
        )
        self.val_dataset = WorldVideoDataset(
            self.world, self.val_prompts, num_frames, val_size, seed, _VAL_STREAM, cycle_prompts=True
        )
        images = WorldVideoDataset(
            self.world,
            self.train_prompts,
            1,
            max(image_batches * image_batch_size, 1),
            seed,
            _IMAGE_STREAM,
            with_layout=True,
        )
        self.train_batches = ImagesThenVideos(
            self.train_dataset, images, batch_size, image_batch_size, image_batches
        )

    def _loader(self, dataset: WorldVideoDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Sequential loader over the image batches, then the virtual epoch of videos; resumes mid-epoch."""
        return ResumableDataLoader(
            self.train_batches,
            batch_size=1,  # every item is a whole batch
            collate_fn=_only_item,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Loader over the held-out prompts with fixed seeds."""
        return self._loader(self.val_dataset)

    def ground_truth(self, prompt: str, seed: int, num_frames: int, start_frame: int = 0) -> torch.Tensor:
        """A long real video for a prompt, e.g. the reference for a long student rollout.

        Args:
            prompt: A prompt of the world's grammar.
            seed: Seed of the video's sizes, positions, velocities and background.
            num_frames: Frames to render.
            start_frame: First frame index (a window equals the slice of a longer render).

        Returns:
            Float32 tensor ``(3, num_frames, H, W)`` in ``[-1, 1]``.
        """
        spec = spec_from_prompt(prompt, seed, self.world)
        return torch.from_numpy(render(spec, num_frames, start_frame))
