"""ODE pairs for the ODE-init stage: teacher trajectories kept at the student's noise levels.

Generation (:class:`OdePairGenerator`, run by ``python -m sfpp.ode_pairs``) samples the frozen
bidirectional teacher with classifier-free guidance from seeded noise, keeps the state of every ODE
trajectory at the student's few-step noise levels (:attr:`FewStepSampler.sigmas
<sfpp.diffusion.rollout.FewStepSampler.sigmas>`) and its final clean latent, and writes them in
safetensors shards through an :class:`OdePairWriter`. A directory of pairs looks like::

    index.json                 settings of the run, the shards written and their sizes
    shard_00000.safetensors    noisy (N, K, C, F, H, W), clean (N, C, F, H, W); prompts in the metadata
    shard_00001.safetensors    ...

Trajectory ``j`` of shard ``s`` starts from noise seeded by ``(seed, s, j)`` and its prompt is a pure
function of ``(seed, s * shard_size + j)``, so an interrupted run resumes where it stopped (complete
shards are skipped) and produces the data an uninterrupted run would have. A directory whose
``index.json`` holds other settings is refused rather than mixed.

Reading is :mod:`sfpp.data.ode_pairs_data`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sfpp.data.prompts import read_prompts
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.diffusion.sampling import EulerSampler
from sfpp.models.config import config_of
from sfpp.utils.progress import ProgressReport
from sfpp.utils.seeding import derive_seed

__all__ = [
    "INDEX_FILE",
    "OdePairGenerator",
    "OdePairSettingsError",
    "OdePairWriter",
    "resolve_prompts",
    "shard_file_name",
]

INDEX_FILE = "index.json"
"""Name of the index of a directory of ODE pairs."""

FORMAT = "sfpp-ode-pairs"
FORMAT_VERSION = 1
GENERATE_COMMAND = "python -m sfpp.ode_pairs"
"""The command that writes ODE pairs (named in errors about missing pairs)."""

_NOISE_STREAM = 0
_PROMPT_STREAM = 1
_STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OdePairSettingsError(ValueError):
    """Raised when a directory of ODE pairs was written with other settings than requested."""


def shard_file_name(shard_index: int) -> str:
    """File name of shard ``shard_index``: ``shard_00000.safetensors``."""
    return f"shard_{shard_index:05d}.safetensors"


def resolve_prompts(source: str) -> list[str]:
    """The prompts of a prompt file (one prompt per line, see :func:`sfpp.data.prompts.read_prompts`).

    Raises:
        FileNotFoundError: If the prompt file does not exist.
        ValueError: For an empty file.
    """
    return read_prompts(source, setting="prompts")


def _json_normalised(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with an index."""
    return json.loads(json.dumps(value))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class OdePairWriter:
    """Owns a directory of ODE pairs: checks its settings, knows which shards are done, writes shards.

    Args:
        directory: Output directory (created if needed).
        settings: Every setting that determines the data (JSON-serialisable). A directory whose
            index holds different settings is refused.

    Raises:
        OdePairSettingsError: If ``directory/index.json`` exists with other settings; the message
            lists each differing setting with its stored and requested value.
        ValueError: If ``directory/index.json`` is not an index of ODE pairs.
    """

    def __init__(self, directory: str | Path, settings: dict[str, Any]) -> None:
        self.directory = Path(directory).expanduser()
        self.settings = _json_normalised(settings)
        self.index_path = self.directory / INDEX_FILE
        if self.index_path.is_file():
            self.index = self._read_index()
            self._check_settings(self.index["settings"])
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.index = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "settings": self.settings,
                "requested_trajectories": 0,
                "num_trajectories": 0,
                "shards": [],
            }
            self._save_index()

    def _read_index(self) -> dict[str, Any]:
        index = json.loads(self.index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(
                f"{self.index_path} is not an index of ODE pairs (format {FORMAT!r}); choose another output_dir"
            )
        return index

    def _check_settings(self, stored: dict[str, Any]) -> None:
        keys = sorted(set(stored) | set(self.settings))
        differing = [
            f"  {key}: stored {stored.get(key, '<unset>')!r}, requested {self.settings.get(key, '<unset>')!r}"
            for key in keys
            if stored.get(key) != self.settings.get(key)
        ]
        if differing:
            raise OdePairSettingsError(
                f"{self.index_path} was written with other settings; refusing to mix ODE pairs:\n"
                + "\n".join(differing)
                + "\nWrite to another output_dir, or run again with the stored settings to resume."
            )

    def _save_index(self) -> None:
        _atomic_write_text(self.index_path, json.dumps(self.index, indent=2) + "\n")

    def set_requested(self, num_trajectories: int) -> None:
        """Record how many trajectories the current run aims for."""
        self.index["requested_trajectories"] = num_trajectories
        self._save_index()

    def is_complete(self, shard_index: int, num_trajectories: int) -> bool:
        """Whether shard ``shard_index`` is listed with ``num_trajectories`` trajectories and its file exists."""
        for entry in self.index["shards"]:
            if entry["index"] == shard_index:
                return (
                    entry["num_trajectories"] == num_trajectories
                    and (self.directory / entry["file"]).is_file()
                )
        return False

    def write_shard(
        self,
        shard_index: int,
        first_trajectory: int,
        noisy: torch.Tensor,
        clean: torch.Tensor,
        prompts: Sequence[str],
    ) -> Path:
        """Write one shard atomically and list it in the index.

        Args:
            shard_index: Shard number.
            first_trajectory: Global index of the shard's first trajectory.
            noisy: ``(N, K, C, F, H, W)`` states at the student's noise levels.
            clean: ``(N, C, F, H, W)`` final clean latents.
            prompts: ``N`` prompts, stored in the shard's metadata.

        Returns:
            The shard's path.
        """
        count = clean.shape[0]
        if noisy.shape[0] != count or len(prompts) != count or noisy.shape[2:] != clean.shape[1:]:
            raise ValueError(
                f"shard {shard_index}: noisy {tuple(noisy.shape)}, clean {tuple(clean.shape)} and "
                f"{len(prompts)} prompts do not describe the same trajectories"
            )
        name = shard_file_name(shard_index)
        path = self.directory / name
        tmp = path.with_name(name + ".tmp")
        metadata = {
            "format": FORMAT,
            "prompts": json.dumps(list(prompts)),
            "first_trajectory": str(first_trajectory),
            "student_sigmas": json.dumps(self.settings.get("student_sigmas")),
        }
        save_file({"noisy": noisy.contiguous(), "clean": clean.contiguous()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        shards = [entry for entry in self.index["shards"] if entry["index"] != shard_index]
        shards.append(
            {
                "index": shard_index,
                "file": name,
                "first_trajectory": first_trajectory,
                "num_trajectories": count,
            }
        )
        self.index["shards"] = sorted(shards, key=lambda entry: entry["index"])
        self.index["num_trajectories"] = sum(entry["num_trajectories"] for entry in self.index["shards"])
        self._save_index()
        return path


class OdePairGenerator:
    """Sample the teacher with CFG and store its trajectories at the student's noise levels.

    Args:
        teacher: Frozen bidirectional flow predictor ``teacher(x_t, timestep, context)`` (a
            :class:`~sfpp.models.causal_wan.CausalWanDiT` with ``causal=False``).
        text_encoder: Prompts -> ``(embeddings (B, L, D), mask (B, L))``.
        sampler: The teacher's Euler sampler (steps, shift, CFG scale).
        student_sampler: The student's few-step schedule; states are kept at its ``sigmas``.
        latent_shape: ``(C, H, W)`` of one latent frame.
        num_frames: Latent frames per trajectory (the teacher horizon).
        prompts: A prompt file for :func:`resolve_prompts`, or an explicit list (the built-in
            world's configs pass :func:`sfpp.world.train_prompts`). Trajectory ``i`` gets the prompts cycled in an order reshuffled (seeded)
            every cycle.
        num_trajectories: Trajectories to have in the output directory.
        shard_size: Trajectories per shard.
        seed: Seed of the noise and of the prompt order.
        batch_size: Trajectories sampled together (does not change the data).
        teacher_checkpoint: Where the teacher's weights come from, recorded in the index.
        negative_prompt: The CFG null condition.
        storage_dtype: ``float32``, ``bfloat16`` or ``float16`` for the stored latents.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        autocast_dtype: Autocast dtype of the teacher's forward (e.g. ``bfloat16``), or ``None``.
        show_progress: Show the progress (a bar in a terminal, log lines otherwise).

    Raises:
        ValueError: For impossible settings, naming the setting.
    """

    def __init__(
        self,
        teacher: nn.Module,
        text_encoder: Any,
        sampler: EulerSampler,
        student_sampler: FewStepSampler,
        latent_shape: Sequence[int],
        num_frames: int,
        prompts: str | Sequence[str],
        num_trajectories: int,
        shard_size: int = 64,
        seed: int = 0,
        batch_size: int = 16,
        teacher_checkpoint: str = "",
        negative_prompt: str = "",
        storage_dtype: str = "float32",
        device: str = "auto",
        autocast_dtype: str | None = None,
        show_progress: bool = True,
    ) -> None:
        for name, value in (
            ("num_frames", num_frames),
            ("num_trajectories", num_trajectories),
            ("shard_size", shard_size),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(latent_shape) != 3:
            raise ValueError(f"latent_shape must be (C, H, W) of one latent frame, got {list(latent_shape)}")
        config = config_of(teacher)
        if config is not None and config.causal:
            raise ValueError("the teacher must be bidirectional: build it with causal=false")
        in_channels = latent_shape[0] if config is None else config.in_channels
        if latent_shape[0] != in_channels:
            raise ValueError(
                f"latent_shape={list(latent_shape)} has {latent_shape[0]} channels but the teacher takes "
                f"{in_channels}; fix latent_shape"
            )
        if storage_dtype not in _STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {sorted(_STORAGE_DTYPES)}, got {storage_dtype!r}")
        if autocast_dtype is not None and autocast_dtype not in _STORAGE_DTYPES:
            raise ValueError(
                f"autocast_dtype must be null or one of {sorted(_STORAGE_DTYPES)}, got {autocast_dtype!r}"
            )
        if isinstance(prompts, str):
            self.prompt_source = prompts
            self.prompts = resolve_prompts(prompts)
        else:
            self.prompts = [str(p) for p in prompts]
            self.prompt_source = f"<list of {len(self.prompts)} prompts>"
        if not self.prompts:
            raise ValueError("prompts is empty; give a prompt source or at least one prompt")
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device)
        if isinstance(text_encoder, nn.Module):
            text_encoder.eval().requires_grad_(False)
        self.sampler = sampler
        self.student_sigmas = [float(s) for s in student_sampler.sigmas]
        self.latent_shape = tuple(int(d) for d in latent_shape)
        self.num_frames = num_frames
        self.num_trajectories = num_trajectories
        self.shard_size = shard_size
        self.seed = seed
        self.batch_size = batch_size
        self.teacher_checkpoint = str(teacher_checkpoint)
        self.negative_prompt = negative_prompt
        self.storage_dtype = storage_dtype
        self.autocast_dtype = autocast_dtype
        self.show_progress = show_progress
        self._permutation = lru_cache(maxsize=4)(self._cycle_order)

    # -- settings and determinism ------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting that determines the stored data (compared when resuming)."""
        return {
            "teacher_checkpoint": self.teacher_checkpoint,
            "sampler_num_steps": self.sampler.num_steps,
            "sampler_shift": float(self.sampler.shift),
            "guidance_scale": float(self.sampler.guidance_scale),
            "negative_prompt": self.negative_prompt,
            "student_sigmas": self.student_sigmas,
            "latent_shape": list(self.latent_shape),
            "num_frames": self.num_frames,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "prompt_source": self.prompt_source,
            "prompts_sha256": hashlib.sha256("\n".join(self.prompts).encode()).hexdigest(),
            "storage_dtype": self.storage_dtype,
            "autocast_dtype": self.autocast_dtype,
        }

    @property
    def num_shards(self) -> int:
        """Shards holding ``num_trajectories`` trajectories."""
        return -(-self.num_trajectories // self.shard_size)

    def shard_range(self, shard_index: int) -> range:
        """Global indices of the trajectories of shard ``shard_index``."""
        start = shard_index * self.shard_size
        return range(start, min(start + self.shard_size, self.num_trajectories))

    def noise_for(self, index: int) -> torch.Tensor:
        """The starting noise ``(C, F, H, W)`` of trajectory ``index`` (CPU, float32, seeded by ``(seed, shard, j)``)."""
        shard, position = divmod(index, self.shard_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _NOISE_STREAM, shard, position))
        channels, height, width = self.latent_shape
        return torch.randn(channels, self.num_frames, height, width, generator=generator)

    def _cycle_order(self, cycle: int) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, _PROMPT_STREAM, cycle))
        return torch.randperm(len(self.prompts), generator=generator).tolist()

    def prompt_for(self, index: int) -> str:
        """The prompt of trajectory ``index``: the prompts cycled, reshuffled (seeded) every cycle."""
        cycle, position = divmod(index, len(self.prompts))
        return self.prompts[self._permutation(cycle)[position]]

    # -- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample trajectories from ``noise`` and keep them at the student's noise levels.

        Args:
            prompts: ``B`` prompts.
            noise: ``(B, C, F, H, W)`` starting noise.

        Returns:
            ``noisy (B, K, C, F, H, W)`` and ``clean (B, C, F, H, W)``, float32 on the CPU.
        """
        noise = noise.to(self.device)
        context, _ = self.text_encoder(list(prompts))
        null_context, _ = self.text_encoder([self.negative_prompt] * len(prompts))
        dtype = _STORAGE_DTYPES[self.autocast_dtype] if self.autocast_dtype else torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None):
            result = self.sampler.sample(
                self.teacher,
                noise,
                context.to(self.device),
                null_context.to(self.device),
                keep_sigmas=self.student_sigmas,
            )
        assert result.trajectory is not None  # keep_sigmas is never empty
        return result.trajectory.float().cpu(), result.x0.float().cpu()

    def run(self, output_dir: str | Path) -> Path:
        """Generate every missing shard of ``output_dir`` (complete shards are skipped).

        Args:
            output_dir: Directory of the pairs; created if needed.

        Returns:
            The path of ``index.json``.

        Raises:
            OdePairSettingsError: If ``output_dir`` holds pairs written with other settings.
        """
        writer = OdePairWriter(output_dir, self.settings)
        writer.set_requested(self.num_trajectories)
        storage = _STORAGE_DTYPES[self.storage_dtype]
        report = ProgressReport(
            "ODE pairs", self.num_trajectories, "trajectories", enabled=self.show_progress
        )
        with report:
            for shard in range(self.num_shards):
                indices = self.shard_range(shard)
                report.update(report.completed, shard=shard)
                if writer.is_complete(shard, len(indices)):
                    report.advance(len(indices))
                    continue
                noisy, clean, prompts = self._sample_shard(indices, report.advance)
                writer.write_shard(shard, indices.start, noisy.to(storage), clean.to(storage), prompts)
        return writer.index_path

    def _sample_shard(
        self, indices: range, advance: Callable[[int], None]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        noisy, clean, prompts = [], [], []
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            batch_prompts = [self.prompt_for(i) for i in batch]
            noise = torch.stack([self.noise_for(i) for i in batch])  # (B, C, F, H, W)
            batch_noisy, batch_clean = self.generate(batch_prompts, noise)
            noisy.append(batch_noisy)
            clean.append(batch_clean)
            prompts.extend(batch_prompts)
            advance(len(batch))
        return torch.cat(noisy), torch.cat(clean), prompts  # (N, K, C, F, H, W), (N, C, F, H, W)


# -- reading -----------------------------------------------------------------------------------
