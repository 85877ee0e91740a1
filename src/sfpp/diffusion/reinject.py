"""NoiseReinjector: "backward noise initialisation" of a clean student window for DMD.

The student's clean window ``x0`` is re-noised on the flow-matching schedule,
``x_t = (1 - sigma) * x0 + sigma * eps`` with ``eps ~ N(0, I)``, at a DMD timestep drawn uniformly,
shifted and clamped (Self-Forcing++: "uniform, shifted, clamped to [20, 980]"):

1. ``u ~ U[0, 1)`` per sample;
2. ``sigma = shift_sigma(u, shift)`` (more draws at high noise for ``shift > 1``);
3. ``timestep = clamp(sigma * num_train_timesteps, min_timestep, max_timestep)`` and
   ``sigma = timestep / num_train_timesteps``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sfpp.diffusion.schedule import add_noise, shift_sigma

__all__ = ["NoiseReinjector"]


class NoiseReinjector:
    """Re-noise clean latents at a random DMD timestep, one timestep per sample.

    Args:
        shift: Timestep shift applied to the uniform draw (1.0 = none; the paper: 5.0).
        min_timestep: Lowest timestep, on the ``0..num_train_timesteps`` scale (the paper: 20).
        max_timestep: Highest timestep (the paper: 980).
        num_train_timesteps: Timestep scale: ``sigma = timestep / num_train_timesteps``.

    Raises:
        ValueError: If ``shift`` is not a finite positive number or the timestep range is not
            ``0 <= min_timestep <= max_timestep <= num_train_timesteps``.
    """

    def __init__(
        self,
        shift: float = 5.0,
        min_timestep: float = 20.0,
        max_timestep: float = 980.0,
        num_train_timesteps: int = 1000,
    ) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(
                f"shift must be a finite number > 0 (1.0 = no shift, the paper: 5.0), got {shift}"
            )
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 1
        ):
            raise ValueError(
                f"num_train_timesteps must be an integer >= 1 (Wan2.1: 1000), got {num_train_timesteps!r}"
            )
        if not 0 <= min_timestep <= max_timestep <= num_train_timesteps:
            raise ValueError(
                f"need 0 <= min_timestep <= max_timestep <= num_train_timesteps, got min_timestep={min_timestep}, "
                f"max_timestep={max_timestep}, num_train_timesteps={num_train_timesteps} (the paper: 20, 980, 1000)"
            )
        self.shift = float(shift)
        self.min_timestep = float(min_timestep)
        self.max_timestep = float(max_timestep)
        self.num_train_timesteps = num_train_timesteps

    def __repr__(self) -> str:
        return (
            f"NoiseReinjector(shift={self.shift}, min_timestep={self.min_timestep}, "
            f"max_timestep={self.max_timestep}, num_train_timesteps={self.num_train_timesteps})"
        )

    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw one DMD timestep per sample.

        The draw happens on ``generator``'s device, so a CPU generator gives the same timesteps
        whatever ``device`` is.

        Args:
            batch_size: Number of samples ``B``.
            generator: Source of the uniform draw (seeded by the caller).
            device: Device of the returned tensors (default: the generator's).

        Returns:
            ``(timestep, sigma)``, float32 tensors of shape ``(B,)``; ``timestep`` lies in
            ``[min_timestep, max_timestep]`` and ``sigma = timestep / num_train_timesteps``.

        Raises:
            ValueError: If ``batch_size`` is not an integer >= 1.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        uniform = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float32)
        sigma = shift_sigma(uniform, self.shift)  # (B,)
        timestep = (sigma * self.num_train_timesteps).clamp(self.min_timestep, self.max_timestep)  # (B,)
        sigma = timestep / self.num_train_timesteps
        target = generator.device if device is None else device
        return timestep.to(target), sigma.to(target)

    def __call__(
        self,
        x0: Tensor,
        generator: torch.Generator,
        batch_slice: slice | None = None,
        global_batch: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Re-noise ``x0``: ``x_t = (1 - sigma) * x0 + sigma * eps``.

        The timesteps are drawn first, then the noise, both from ``generator`` and on its device
        (a CPU generator gives the same draws for latents on any device; a generator on the
        latents' device avoids drawing on the host and copying). ``x0``'s graph is kept (the
        caller detaches if it wants to).

        Under data parallelism ``x0`` holds this rank's rows of a global batch: with
        ``global_batch`` and ``batch_slice`` the timesteps and noise are drawn for all
        ``global_batch`` samples and the ``batch_slice`` rows are kept, so every rank draws the same
        numbers from a shared generator and N processes reproduce one process with the global batch.

        Args:
            x0: Clean latents ``(B, C, F, H, W)`` (any ``(B, ...)`` shape works).
            generator: Source of every draw (seeded by the caller).
            batch_slice: This rank's rows of the global batch (e.g. ``slice(rank, None, world_size)``);
                ``None``: ``x0`` is the whole batch.
            global_batch: Size of the global batch; given together with ``batch_slice``.

        Returns:
            ``(x_t, noise, timestep, sigma)``: ``x_t`` and ``noise`` shaped and typed like ``x0``;
            ``timestep`` and ``sigma`` float32 ``(B,)`` on ``x0``'s device.

        Raises:
            ValueError: If ``x0`` has no batch axis, if only one of ``batch_slice`` and
                ``global_batch`` is given, or if the slice does not select ``B`` rows of the global batch.
        """
        if x0.ndim < 1:
            raise ValueError(f"x0 must have a batch axis, (B, C, F, H, W), got shape {tuple(x0.shape)}")
        if (batch_slice is None) != (global_batch is None):
            raise ValueError("give batch_slice and global_batch together (or neither)")
        batch = x0.shape[0]
        if batch_slice is None:
            global_batch, batch_slice = batch, slice(None)
        elif len(range(global_batch)[batch_slice]) != batch:
            raise ValueError(
                f"batch_slice={batch_slice} selects {len(range(global_batch)[batch_slice])} of global_batch="
                f"{global_batch} samples, but x0 has a batch of {batch}"
            )
        timestep, sigma = self.sample_timesteps(global_batch, generator, device=x0.device)
        timestep, sigma = timestep[batch_slice], sigma[batch_slice]
        shape = (global_batch, *x0.shape[1:])
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=x0.dtype)[batch_slice]
        noise = noise.to(x0.device)
        x_t = add_noise(x0, noise, sigma)
        return x_t, noise, timestep, sigma
