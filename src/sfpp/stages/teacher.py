"""Stage 0: pretrain a bidirectional flow-matching teacher (the built-in world's stand-in for Wan2.1).

Orchestration only: the model, text encoder, codec, noise schedule, sampler and quality metric
are components passed in by the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from sfpp.diffusion.sampling import EulerSampler
from sfpp.diffusion.schedule import add_noise, flow_target, timestep_from_sigma, x0_from_flow
from sfpp.diffusion.training import LossWeighting, TrainingSigmas, mean_squared_error
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.parallelize import configure_stage_modules
from sfpp.stages.base import SupervisedStage
from sfpp.stages.draws import GlobalBatchDraws

__all__ = ["TeacherModule"]


class TeacherModule(SupervisedStage):
    """Flow-matching pretraining with classifier-free-guidance dropout and an EMA copy.

    Args:
        model: Bidirectional :class:`CausalWanDiT` (``causal=False``).
        text_encoder: Maps ``list[str]`` to ``(embeddings (B, L, D), mask (B, L))``.
        codec: Pixels to latents (``encode``/``decode``); the built-in world uses pixels directly.
        optimizer: Partial optimiser, built after sharding on the trainable parameters.
        lr_scheduler: Optional partial LR scheduler (stepped every optimisation step).
        train_text_encoder: Train the text encoder with the teacher (the world's small encoder)
            instead of keeping it frozen (umT5).
        timestep_sampler: The training noise levels (:class:`~sfpp.diffusion.training.TrainingSigmas`:
            uniform or logit-normal, then shifted); ``None`` (default): uniform, unshifted.
        loss_space: ``flow``: MSE between predicted and true flow (Wan). ``x0``: MSE between the
            clean latents implied by the prediction and the true ones (pairs with a model whose
            ``prediction_type`` is ``x0``; learns much faster at the built-in world's size).
        loss_weighting: Turns the squared error into per-sample losses
            (:class:`~sfpp.diffusion.training.LossWeighting`, e.g.
            :class:`~sfpp.diffusion.training.MinSNRWeighting`); ``None`` (default): each sample's
            mean squared error, every level alike.
        x0_target: Optional ``target(x0, x_t, sigma, batch) -> tensor like x0`` that replaces the
            clean latents as the regression target (``loss_space: x0`` only); ``batch`` is the
            training batch, for targets that read its annotations. For example the built-in
            world's exact posterior mean for single frames
            (:class:`~sfpp.world.targets.WorldPosteriorTarget`), which has the same minimiser
            as ``x0`` and far less variance. ``None`` (default): ``x0``.
        cfg_dropout: Probability of replacing a prompt by the empty prompt (the CFG null condition).
        clean_prefix_probability: Probability, per video sample, that its first latent frames are
            given clean (timestep 0, left out of the loss) while the rest is noised: the teacher
            learns to continue given frames, which prefix-conditioned DMD
            (:class:`~sfpp.diffusion.prefix.PrefixTraining`) shows it. 0 (the default): every
            frame of a sample at one noise level.
        clean_prefix_max_frames: The most latent frames given clean; each prefixed sample draws
            between 1 and ``min(clean_prefix_max_frames, F - 1)`` uniformly.
        ema_decay: Decay of the EMA copy used for sampling and evaluation.
        ema_start_step: Steps before the EMA starts averaging.
        sampler: Euler sampler (steps, shift, CFG scale) for validation samples.
        quality_metric: Optional ``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict`` logged
            under ``val/`` on the validation prompts.
        sample_seed: Seed of the validation samples' noise.
        mixed_precision: bf16 compute with float32 reduction and master weights, applied by the
            FSDP2 sharding of ``trainer=fsdp`` on CUDA (:func:`~sfpp.models.parallelize.parallelize_model`);
            an error on any other setup.
        activation_checkpointing: Recompute the model's block activations in the backward pass
            (CUDA memory at the paper's scale; works anywhere, with or without FSDP2).
        seed: Base seed of the per-step random draws (CFG dropout, noise levels, noise, given
            frames), drawn per ``(seed, step)`` so that a resumed run continues exactly.
        compile_model: Run the training forward through ``torch.compile`` (static shapes: each
            batch shape compiles once, the image and the video batches of the built-in world
            about 40-50 s each on a 2-core CPU). Sampling, validation and the EMA copy stay
            eager. ``tests/benchmarks/bench_teacher_speed.py`` measures what it saves, in float32
            and with ``trainer.precision=bf16-mixed``.
    """

    def __init__(
        self,
        model: CausalWanDiT,
        text_encoder: nn.Module,
        codec: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        train_text_encoder: bool = True,
        timestep_sampler: TrainingSigmas | None = None,
        loss_space: str = "flow",
        loss_weighting: LossWeighting | None = None,
        x0_target: Callable[..., torch.Tensor] | None = None,
        cfg_dropout: float = 0.1,
        clean_prefix_probability: float = 0.0,
        clean_prefix_max_frames: int = 1,
        ema_decay: float = 0.999,
        ema_start_step: int = 0,
        sampler: EulerSampler | None = None,
        quality_metric: Callable[..., dict[str, float]] | None = None,
        sample_seed: int = 1234,
        mixed_precision: bool = False,
        activation_checkpointing: bool = False,
        compile_model: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, seed)
        if model.config.causal:
            raise ValueError("the teacher is bidirectional: build its model with causal=false")
        if loss_space not in ("flow", "x0"):
            raise ValueError(f"loss_space must be 'flow' or 'x0', got {loss_space!r}")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        if not 0.0 <= clean_prefix_probability <= 1.0:
            raise ValueError(f"clean_prefix_probability must be in [0, 1], got {clean_prefix_probability}")
        if clean_prefix_max_frames < 1:
            raise ValueError(f"clean_prefix_max_frames must be >= 1, got {clean_prefix_max_frames}")
        if x0_target is not None and loss_space != "x0":
            raise ValueError(
                f"x0_target replaces the clean latents of an x0 loss; set loss_space: x0 (got {loss_space!r})"
            )
        # Components are saved by Hydra's config of the run; the checkpoint keeps the scalar settings.
        self.save_hyperparameters(
            ignore=[
                "model",
                "text_encoder",
                "codec",
                "quality_metric",
                "x0_target",
                "timestep_sampler",
                "loss_weighting",
                "sampler",
                "optimizer",
                "lr_scheduler",
            ]
        )
        self.model = model
        self.text_encoder = text_encoder
        if not train_text_encoder:
            text_encoder.requires_grad_(False).eval()
        self.codec = codec
        self.ema = self.make_ema(ema_decay, ema_start_step)
        self.sampler = sampler or EulerSampler()
        self.quality_metric = quality_metric
        self.timestep_sampler = timestep_sampler or TrainingSigmas()
        self.loss_space = loss_space
        self.loss_weighting = loss_weighting or mean_squared_error
        self.x0_target = x0_target
        self.cfg_dropout = cfg_dropout
        # The compiled forward, built at the first training step (after any sharding); kept in a
        # plain dict so that it is not registered as a second copy of the model's weights.
        self._compiled: dict[str, Callable[..., torch.Tensor]] = {}

    @property
    def trained_model(self) -> nn.Module:
        """The teacher model."""
        return self.model

    # -- parallelism ---------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Shard the model (and a trainable text encoder) with FSDP2 when the strategy provides a mesh.

        Lightning may call this more than once: modules already sharded (or already checkpointed)
        are left as they are. The EMA copy is sharded like the model; a frozen text encoder stays
        replicated. Without a mesh, only activation checkpointing applies.

        Raises:
            ValueError: For ``mixed_precision`` without a device mesh, or if a trainable parameter
                ends up unsharded.
        """
        trained: list[nn.Module] = [self.model]
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            trained.append(self.text_encoder)
        configure_stage_modules(
            self,
            self.device_mesh,
            trained=trained,
            frozen=[self.ema.module],
            mixed_precision=self.hparams.mixed_precision,
            activation_checkpointing=self.hparams.activation_checkpointing,
        )

    # -- training ------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        """Warn when the run would end before the data's first video batch (images only)."""
        image_batches = getattr(self.trainer.datamodule, "image_batches", 0)
        max_steps = self.trainer.max_steps
        if not self.trainer.fast_dev_run and image_batches and 0 <= max_steps <= image_batches:
            rank_zero_warn(
                f"trainer.max_steps={max_steps} ends within the data's {image_batches} image batches: "
                "the teacher never sees a video batch and learns no motion; raise max_steps or lower "
                "data.image_batches"
            )

    def train_forward(self) -> Callable[..., torch.Tensor]:
        """The model's forward for training: compiled once with ``compile_model``, else the model."""
        if not self.hparams.compile_model:
            return self.model
        if "model" not in self._compiled:
            self._compiled["model"] = torch.compile(self.model, dynamic=False)
        return self._compiled["model"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One flow-matching step on a batch ``{"video": (B, 3, F, H, W), "prompt": list[str]}``.

        ``train/clip_frames`` logs the batch's frame count, so the loss of the data's one-frame
        image batches can be told from that of the video batches that follow.
        """
        x0 = self.codec.encode(batch["video"])  # (B, C, F, h, w)
        batch_size = x0.shape[0]
        draws = self.step_draws(batch_idx, batch_size)
        drop = draws.rand() < self.cfg_dropout
        prompts = ["" if d else p for p, d in zip(batch["prompt"], drop.tolist(), strict=True)]
        context = self.encode_prompts(prompts)
        sigma = draws.sigmas(self.timestep_sampler)  # (B,)
        noise = draws.randn(*x0.shape[1:]).to(x0.dtype)
        x_t = add_noise(x0, noise, sigma)
        noisy = self._noisy_frames(x0, draws)  # (B, F) or None: every frame noised
        model_sigma = sigma
        if noisy is not None:  # the given frames clean, at timestep 0
            x_t = torch.where(noisy[:, None, :, None, None], x_t, x0)
            model_sigma = sigma[:, None] * noisy  # (B, F)
        flow = self.train_forward()(x_t, timestep_from_sigma(model_sigma), context)
        target = x0 if self.x0_target is None else self.x0_target(x0, x_t, sigma, batch)
        if noisy is None:  # the signature of loss before given frames (subclasses may override it)
            loss = self.loss(flow, target, noise, x_t, sigma)
        else:
            loss = self.loss(flow, target, noise, x_t, sigma, noisy)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/clip_frames", float(batch["video"].shape[2]), batch_size=batch_size)
        return loss

    def loss(
        self,
        flow: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        noisy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The batch's flow-matching loss in ``loss_space``, weighted by ``loss_weighting``.

        Args:
            flow: Predicted flow ``(B, C, F, h, w)``.
            x0: The regression target, same shape: the clean latents, or ``x0_target``'s estimate
                of them.
            noise: The noise mixed into ``x0``, same shape.
            x_t: The model's input, same shape.
            sigma: Per-sample noise levels ``(B,)`` of the noised frames.
            noisy: Optional ``(B, F)`` boolean, false on frames given clean: their error is left out
                and each sample's error is the mean over its noised frames.

        Returns:
            Scalar float32 loss: the mean over samples of each sample's weighted squared error.
        """
        frame_sigma = sigma if noisy is None else sigma[:, None] * noisy  # (B,) or (B, F)
        if self.loss_space == "x0":
            error = x0_from_flow(flow, x_t, frame_sigma).float() - x0.float()
        else:
            error = flow.float() - flow_target(x0, noise).float()
        squared = error.square()
        if noisy is not None:  # zero the given frames, scale each sample to the mean over the rest
            keep = noisy.float()  # (B, F)
            scale = keep.shape[1] / keep.sum(dim=1, keepdim=True)  # (B, 1): F / noised frames
            squared = squared * (keep * scale)[:, None, :, None, None]
        return self.loss_weighting(squared, x0, sigma, self.loss_space).mean()

    def _noisy_frames(self, x0: torch.Tensor, draws: GlobalBatchDraws) -> torch.Tensor | None:
        """Which latent frames of each sample are noised ``(B, F)``, or ``None`` when all are.

        With ``clean_prefix_probability`` a sample's first ``k`` frames are given clean, ``k`` drawn
        uniformly in ``[1, min(clean_prefix_max_frames, F - 1)]``; one-frame batches are never
        prefixed. ``draws`` are the step's (:meth:`step_draws`).
        """
        p, frames = self.hparams.clean_prefix_probability, x0.shape[2]
        if p == 0 or frames < 2:
            return None
        prefixed = draws.rand() < p
        longest = min(self.hparams.clean_prefix_max_frames, frames - 1)
        given = draws.randint(1, longest + 1) * prefixed  # (B,)
        return torch.arange(frames, device=self.device)[None] >= given[:, None]  # (B, F)

    # -- sampling and validation ---------------------------------------------------------------

    @torch.no_grad()
    def sample_videos(
        self, prompts: list[str], num_frames: int, frame_size: tuple[int, int], seed: int | None = None
    ) -> torch.Tensor:
        """Sample videos with the EMA teacher.

        Args:
            prompts: One prompt per video.
            num_frames: Latent frames per video.
            frame_size: ``(height, width)`` of the decoded frames.
            seed: Noise seed (default: ``sample_seed``); the same seed gives the same videos.

        Returns:
            Decoded videos ``(B, 3, F', H, W)`` in ``[-1, 1]``.
        """
        height, width = frame_size
        stride = self.codec.spatial_stride
        generator = torch.Generator().manual_seed(self.hparams.sample_seed if seed is None else seed)
        shape = (len(prompts), self.codec.latent_channels, num_frames, height // stride, width // stride)
        noise = torch.randn(shape, generator=generator).to(self.device)
        context = self.encode_prompts(prompts)
        null_context = self.encode_prompts([""] * len(prompts))
        result = self.sampler.sample(self.ema.module, noise, context, null_context)
        return self.codec.decode(result.x0).clamp(-1, 1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Sample the validation prompts and log the quality metric (when one is configured)."""
        if self.quality_metric is None:
            return
        video = batch["video"]  # (B, 3, F, H, W)
        num_latent_frames = self.codec.num_latent_frames(video.shape[2])
        seed = self.hparams.sample_seed + batch_idx
        samples = self.sample_videos(batch["prompt"], num_latent_frames, tuple(video.shape[-2:]), seed)
        for name, value in self.quality_metric(samples.cpu(), batch["prompt"]).items():
            self.log(f"val/{name}", float(value), batch_size=video.shape[0])
