"""Stage 0: pretrain a bidirectional flow-matching teacher (the built-in world's stand-in for Wan2.1).

Orchestration only: the model, text encoder, codec, noise schedule, sampler and quality metric
are components passed in by the config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from sfpp.diffusion.losses import foreground_weights
from sfpp.diffusion.sampling import EulerSampler
from sfpp.diffusion.schedule import add_noise, flow_target, min_snr_weight, training_sigmas, x0_from_flow
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.ema import EMA
from sfpp.models.parallelize import configure_stage_modules

__all__ = ["TeacherModule"]


class TeacherModule(L.LightningModule):
    """Flow-matching pretraining with classifier-free-guidance dropout and an EMA copy.

    Args:
        model: Bidirectional :class:`CausalWanDiT` (``causal=False``).
        text_encoder: Maps ``list[str]`` to ``(embeddings (B, L, D), mask (B, L))``.
        codec: Pixels to latents (``encode``/``decode``); the built-in world uses pixels directly.
        optimizer: Partial optimiser, built after sharding on the trainable parameters.
        lr_scheduler: Optional partial LR scheduler (stepped every optimisation step).
        train_text_encoder: Train the text encoder with the teacher (the world's small encoder)
            instead of keeping it frozen (umT5).
        timestep_shift: Shift of the training noise levels (``sigma = shift(u)``, ``u ~ U(0, 1)``).
        timestep_logit_normal: ``[mean, std]``: draw ``logit(u)`` from a normal instead
            (:func:`~sfpp.diffusion.schedule.training_sigmas`), which trains more at the middle
            noise levels where the world's shapes are decided; ``None`` (default): uniform.
        loss_space: ``flow``: MSE between predicted and true flow (Wan). ``x0``: MSE between the
            clean latents implied by the prediction and the true ones (pairs with a model whose
            ``prediction_type`` is ``x0``; learns much faster at the built-in world's size).
        min_snr_gamma: Weight each sample's squared error by min-SNR-gamma
            (:func:`~sfpp.diffusion.schedule.min_snr_weight`, expressed in ``loss_space``), which
            moves the training signal from the noisiest levels to the ones where details form;
            ``None`` (default): every level weighs the same.
        foreground_weight: Extra weight of the positions that stand out of their frame's
            background in the squared error (:func:`~sfpp.diffusion.losses.foreground_weights`);
            each sample's error is the weighted mean. 0 (default): every position weighs the same.
        x0_target: Optional ``target(x0, x_t, sigma, batch) -> tensor like x0`` that replaces the
            clean latents as the regression target (``loss_space: x0`` only), e.g. the built-in
            world's exact posterior mean for single frames
            (:class:`~sfpp.world.targets.WorldPosteriorTarget`), which has the same minimiser
            as ``x0`` and far less variance. ``None`` (default): ``x0``.
        cfg_dropout: Probability of replacing a prompt by the empty prompt (the CFG null condition).
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
        compile_model: Run the training forward through ``torch.compile`` (static shapes: each
            batch shape compiles once, the image and the video batches of the built-in world
            about 40-50 s each on a 2-core CPU). Sampling, validation and the EMA copy stay
            eager. On the toy teacher the compiled step takes 0.75-0.8x the eager one in float32 and,
            with ``trainer.precision=bf16-mixed``, 0.67x on image and 0.54x on video batches
            (``tests/benchmarks/bench_teacher_precision.py``).
    """

    def __init__(
        self,
        model: CausalWanDiT,
        text_encoder: nn.Module,
        codec: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        train_text_encoder: bool = True,
        timestep_shift: float = 1.0,
        timestep_logit_normal: Sequence[float] | None = None,
        loss_space: str = "flow",
        min_snr_gamma: float | None = None,
        foreground_weight: float = 0.0,
        x0_target: Callable[..., torch.Tensor] | None = None,
        cfg_dropout: float = 0.1,
        ema_decay: float = 0.999,
        ema_start_step: int = 0,
        sampler: EulerSampler | None = None,
        quality_metric: Callable[..., dict[str, float]] | None = None,
        sample_seed: int = 1234,
        mixed_precision: bool = False,
        activation_checkpointing: bool = False,
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        if model.causal:
            raise ValueError("the teacher is bidirectional: build its model with causal=false")
        if timestep_logit_normal is not None and (
            len(timestep_logit_normal) != 2 or not float(timestep_logit_normal[1]) > 0
        ):
            raise ValueError(
                f"timestep_logit_normal must be [mean, std] with std > 0 (or null), got {timestep_logit_normal}"
            )
        if loss_space not in ("flow", "x0"):
            raise ValueError(f"loss_space must be 'flow' or 'x0', got {loss_space!r}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive or null, got {min_snr_gamma}")
        if not foreground_weight >= 0:
            raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
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
                "sampler",
                "optimizer",
                "lr_scheduler",
            ]
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model = model
        self.text_encoder = text_encoder
        if not train_text_encoder:
            text_encoder.requires_grad_(False).eval()
        self.codec = codec
        self.ema = EMA(model, decay=ema_decay, start_step=ema_start_step)
        self.sampler = sampler or EulerSampler()
        self.quality_metric = quality_metric
        self.timestep_shift = timestep_shift
        self.timestep_logit_normal = (
            None
            if timestep_logit_normal is None
            else (float(timestep_logit_normal[0]), float(timestep_logit_normal[1]))
        )
        self.loss_space = loss_space
        self.min_snr_gamma = min_snr_gamma
        self.foreground_weight = foreground_weight
        self.x0_target = x0_target
        self.cfg_dropout = cfg_dropout
        # The compiled forward, built at the first training step (after any sharding); kept in a
        # plain dict so that it is not registered as a second copy of the model's weights.
        self._compiled: dict[str, Callable[..., torch.Tensor]] = {}

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

    # -- conditioning --------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``(B, L, D)`` on the module's device."""
        embeddings, _ = self.text_encoder(prompts)
        return embeddings.to(self.device)

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
        drop = torch.rand(batch_size, device=self.device) < self.cfg_dropout
        prompts = ["" if d else p for p, d in zip(batch["prompt"], drop.tolist(), strict=True)]
        context = self.encode_prompts(prompts)
        sigma = training_sigmas(
            batch_size, self.timestep_shift, self.timestep_logit_normal, device=self.device
        )  # (B,)
        noise = torch.randn_like(x0)
        x_t = add_noise(x0, noise, sigma)
        flow = self.train_forward()(x_t, sigma * 1000.0, context)
        target = x0 if self.x0_target is None else self.x0_target(x0, x_t, sigma, batch)
        loss = self.loss(flow, target, noise, x_t, sigma)
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
    ) -> torch.Tensor:
        """The batch's flow-matching loss in ``loss_space``, with the optional min-SNR and foreground weights.

        Args:
            flow: Predicted flow ``(B, C, F, h, w)``.
            x0: The regression target, same shape: the clean latents, or ``x0_target``'s estimate
                of them (the foreground weights are taken from it too).
            noise: The noise mixed into ``x0``, same shape.
            x_t: The model's input, same shape.
            sigma: Per-sample noise levels ``(B,)``.

        Returns:
            Scalar float32 loss: the mean over samples of each sample's mean squared error.
        """
        if self.loss_space == "x0":
            error = x0_from_flow(flow, x_t, sigma).float() - x0.float()
        else:
            error = flow.float() - flow_target(x0, noise).float()
        if self.foreground_weight > 0:
            weights = foreground_weights(x0, self.foreground_weight).expand_as(error)  # (B, C, F, h, w)
            per_sample = (error.square() * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)  # (B,)
        else:
            per_sample = error.square().flatten(1).mean(1)  # (B,)
        if self.min_snr_gamma is None:
            return per_sample.mean()
        weight = min_snr_weight(sigma, self.min_snr_gamma)  # (B,), defined on the x0 error
        if self.loss_space == "flow":  # the flow error is the x0 error / sigma: same objective
            weight = weight * sigma.float().square()
        return (per_sample * weight).mean()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Update the EMA copy after every optimisation step."""
        self.ema.update(self.model, self.global_step)

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

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        """Build the optimiser (after sharding) on the trainable parameters."""
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
