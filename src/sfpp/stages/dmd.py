"""Stage 2: extended DMD (Self-Forcing++), with Self-Forcing as the short-horizon case.

Every optimisation step starts the same way: the student rolls out ``rollout_frames`` latent frames
chunk by chunk through its rolling KV cache, exactly as at inference, and a window of
``window_frames`` (the teacher's horizon) is drawn inside the rollout. Only what the window needs
is generated (nothing past its end), and only the window's chunks keep a graph, at one randomly
drawn denoising step each. Then either

* the critic (the "fake score") takes a flow-matching step on the detached window, or
* the generator takes a DMD step: the window is re-noised on the schedule (backward noise
  initialisation) and pushed along ``(fake x0 - real x0)``, the difference between the critic's and
  the frozen teacher's (CFG) denoised estimates, normalised per sample.

With ``rollout_frames == window_frames`` this is Self-Forcing; with a rollout many times the
window it is Self-Forcing++: the teacher never sees more than its horizon yet supervises every part
of a long rollout. The schedule of critic and generator updates is a pure function of the step
count, and every random draw comes from a generator seeded by ``(seed, step)``, so a resumed run
continues exactly where it stopped.

Data parallelism (``trainer=ddp`` or ``trainer=fsdp``): every rank holds the same per-step generator.
Per-step scalars (window start, exit steps) are drawn once and agree on all ranks; per-sample draws
(rollout noise, re-noising timesteps and noise) are drawn for the global batch and each rank keeps
its own rows: rank ``r`` of ``W`` holds global samples ``r, r + W, r + 2W, ...``, the layout of
torch's ``DistributedSampler``. N processes with a local batch B thus take the same steps as one
process with the batch N * B dealt in that order (Lightning's default training sampler also
shuffles, so reproducing a particular single-process run needs ``DistributedSampler(shuffle=False)``
or a data module that deals samples itself). Under ``trainer=fsdp`` :meth:`DMDModule.configure_model` shards the
generator, critic, teacher and EMA copy with FSDP2 (see :mod:`sfpp.models.parallelize`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sfpp.diffusion.losses import dmd_loss, flow_matching_loss, real_and_fake_x0
from sfpp.diffusion.prefix import PrefixTraining, given_in_window, hold_to_chunks, keep_given_clean
from sfpp.diffusion.reencode import WindowReencoder
from sfpp.diffusion.reinject import NoiseReinjector
from sfpp.diffusion.rollout import FewStepSampler, stream_rollout, write_prefix
from sfpp.diffusion.window import WindowSampler
from sfpp.models.causal_wan import CausalWanDiT
from sfpp.models.critic import ScoreCritic
from sfpp.models.lora import LoraSettings, apply_lora
from sfpp.models.parallelize import configure_stage_modules
from sfpp.stages.checkpoints import load_submodule
from sfpp.stages.student import StudentSettings, StudentStage
from sfpp.utils.seeding import CRITIC_REINJECTION_STREAM, step_generator

__all__ = ["EXIT_STEP_DRAWS", "DMDModule", "critic_group", "update_kind"]

#: How a training rollout's exit steps are drawn (see ``DMDModule``'s ``exit_step_draw``).
EXIT_STEP_DRAWS: tuple[str, ...] = ("per_rollout", "per_chunk")


def update_kind(step: int, critic_updates_per_generator: int, critic_warmup_steps: int) -> str:
    """Which network the optimisation step ``step`` updates: ``"critic"`` or ``"generator"``.

    The first ``critic_warmup_steps`` steps train the critic alone; afterwards every
    ``critic_updates_per_generator + 1``-th step is a generator step.
    """
    if step < critic_warmup_steps:
        return "critic"
    cycle = critic_updates_per_generator + 1
    return "generator" if (step - critic_warmup_steps) % cycle == critic_updates_per_generator else "critic"


def critic_group(
    step: int, critic_updates_per_generator: int, critic_warmup_steps: int, windows_per_rollout: int
) -> tuple[int, int, int]:
    """The group of consecutive critic steps that shares one rollout with critic step ``step``.

    Groups hold at most ``windows_per_rollout`` critic steps and never span a generator update (the
    generator, hence the distribution of its rollouts, is the same for every step of a group).

    Returns:
        ``(first step of the group, index of step in it, group size)``.

    Raises:
        ValueError: If ``step`` is a generator step or ``windows_per_rollout < 1``.
    """
    if windows_per_rollout < 1:
        raise ValueError(f"critic_windows_per_rollout must be >= 1, got {windows_per_rollout}")
    if update_kind(step, critic_updates_per_generator, critic_warmup_steps) != "critic":
        raise ValueError(f"step {step} is a generator step")
    if step < critic_warmup_steps:
        first = step - step % windows_per_rollout
        return first, step - first, min(windows_per_rollout, critic_warmup_steps - first)
    position = (step - critic_warmup_steps) % (critic_updates_per_generator + 1)  # critic steps: 0..c-1
    group_start = position - position % windows_per_rollout
    size = min(windows_per_rollout, critic_updates_per_generator - group_start)
    return step - position + group_start, position - group_start, size


class DMDModule(StudentStage):
    """Distribution matching distillation of a causal student over long self-rollouts.

    Args:
        generator: Block-causal student :class:`CausalWanDiT` (from the ODE init).
        teacher: Frozen bidirectional teacher (the "real score").
        text_encoder: Frozen prompt encoder, ``list[str] -> (embeddings, mask)``.
        codec: Latents to pixels, for sample videos.
        sampler: The student's few-step schedule.
        generator_optimizer: Partial optimiser for the generator.
        critic_optimizer: Partial optimiser for the critic.
        rollout_frames: Length N of each training rollout (N = K: Self-Forcing), in latent frames
            or as seconds (``"100s"``, converted with ``student.fps`` and the codec's temporal
            stride and rounded down to whole chunks).
        student: The settings every student stage shares (:class:`~sfpp.stages.student.StudentSettings`
            or a mapping of its fields: the Hydra node ``stage.student``): latent shape, cache,
            seed, EMA, clipping, accumulation, precision, validation length. Accumulation counts
            updates of the critic or the generator and cannot be combined with
            ``critic_windows_per_rollout > 1``.
        window_frames: Length K of the supervised window (the teacher's horizon), same units.
        window_mode: Where the window starts: ``uniform`` over chunk starts (Self-Forcing++) or
            ``last`` (an ablation; see :class:`WindowSampler`).
        reinjector: Noise levels of the DMD and critic steps.
        real_guidance_scale: CFG scale ``g`` of the teacher's score, in the convention of the whole
            library: ``uncond + g * (cond - uncond)`` (``g = 1``: no guidance). Self-Forcing's
            training code writes ``cond + s * (cond - uncond)``, which is ``g = s + 1``: its
            ``guidance_scale: 3.0`` is ``real_guidance_scale: 4.0`` here.
        exit_step_draw: How the denoising step at which each chunk of a training rollout stops
            (and keeps its graph) is drawn: ``per_rollout`` (one uniformly drawn step shared by
            every chunk of the rollout, as Self-Forcing's default ``same_step_across_blocks``) or
            ``per_chunk`` (an independent draw for each chunk).
        negative_prompt: Prompt of the unconditional side of the teacher's CFG (``""``: the empty
            prompt; Self-Forcing's config uses Wan2.1's default negative prompt).
        critic_checkpoint: Weights the critic starts from instead of a copy of the teacher's: an
            sfpp DMD checkpoint (its ``critic.model.`` entries) or a released Self-Forcing / CausVid
            / LongLive checkpoint (its ``critic`` entry), with the teacher's architecture.
        critic_updates_per_generator: Critic steps per generator step.
        critic_warmup_steps: Critic-only steps at the start.
        critic_windows_per_rollout: Consecutive critic steps that share one rollout (see
            :func:`critic_group`): the group's first step rolls the student out once, without a
            graph, to the end of the latest of the group's windows, and every step of the group
            trains the critic on its own uniformly drawn window of it (with the prompts of the
            group's first batch). ``1`` (the default) draws a fresh rollout for every critic step.
            With ``rollout_frames == window_frames`` every window of a rollout is the same, so the
            setting pays off for long rollouts only, where it divides the cost of critic steps.
        quality_metric: Optional ``metric(videos (B, 3, F, H, W) in [-1, 1], prompts) -> dict``; the
            validation loop streams ``student.val_rollout_frames`` with the EMA student on the
            validation prompts and logs each value as ``val/<name>`` (quality past the teacher's horizon).
        window_reencoder: What the teacher and the critic see of a window that does not start the
            rollout (:class:`~sfpp.diffusion.reencode.WindowReencoder`: its first latent frame
            re-encoded from one pixel frame, as the teacher's clips start, for codecs with a
            temporal stride); ``None`` (the default): the window as it is.
        lora: Low-rank adapters on the generator's and the critic's attention and feed-forward
            linears (:class:`~sfpp.models.lora.LoraSettings` or a mapping of its fields, e.g.
            ``{rank: 32, alpha: 32}``); only the adapters train, and the EMA averages them.
            ``None`` (the default): full fine-tuning.
        prefix: Start some training rollouts from the first frames of the batch's real clips
            (:class:`~sfpp.diffusion.prefix.PrefixTraining` or a mapping of its fields, e.g.
            ``{probability: 0.5, pixel_frames: [1, 8]}``): the frames are written into the cache
            as finished chunks, the window holds them and the generated frames that follow, and
            the teacher and the critic see them clean; the batches must then carry ``"video"``
            clips of at least the longest prefix. ``None`` (the default): every rollout starts
            from noise.
    """

    def __init__(
        self,
        generator: CausalWanDiT,
        teacher: CausalWanDiT,
        text_encoder: nn.Module,
        codec: Any,
        sampler: FewStepSampler,
        generator_optimizer: Callable[..., torch.optim.Optimizer],
        critic_optimizer: Callable[..., torch.optim.Optimizer],
        rollout_frames: int | str,
        window_frames: int | str,
        student: StudentSettings | Mapping[str, Any] | None = None,
        window_mode: str = "uniform",
        reinjector: NoiseReinjector | None = None,
        real_guidance_scale: float = 4.0,
        exit_step_draw: str = "per_rollout",
        negative_prompt: str = "",
        critic_checkpoint: str | None = None,
        critic_updates_per_generator: int = 5,
        critic_warmup_steps: int = 0,
        critic_windows_per_rollout: int = 1,
        quality_metric: Callable[..., dict[str, float]] | None = None,
        window_reencoder: WindowReencoder | None = None,
        lora: LoraSettings | Mapping[str, Any] | None = None,
        prefix: PrefixTraining | Mapping[str, Any] | None = None,
    ) -> None:
        if not generator.config.causal or teacher.config.causal:
            raise ValueError("DMD needs a block-causal generator (causal=true) and a bidirectional teacher")
        student = StudentSettings.parse(student)
        chunk = generator.config.num_frames_per_chunk
        timing = student.timing(codec, generator)
        rollout_frames = timing.parse_length(rollout_frames)
        window_frames = timing.parse_length(window_frames)
        accumulate_grad_batches = student.accumulate_grad_batches
        if exit_step_draw not in EXIT_STEP_DRAWS:
            raise ValueError(f"exit_step_draw must be one of {EXIT_STEP_DRAWS}, got {exit_step_draw!r}")
        if critic_windows_per_rollout < 1:
            raise ValueError(f"critic_windows_per_rollout must be >= 1, got {critic_windows_per_rollout}")
        if accumulate_grad_batches > 1 and critic_windows_per_rollout > 1:
            raise ValueError(
                "accumulate_grad_batches > 1 cannot be combined with critic_windows_per_rollout > 1; set one to 1"
            )
        if window_frames > rollout_frames:
            raise ValueError(f"window_frames={window_frames} is longer than rollout_frames={rollout_frames}")
        if window_frames % chunk or rollout_frames % chunk:
            raise ValueError(
                f"window_frames={window_frames} and rollout_frames={rollout_frames} must be whole chunks "
                f"of num_frames_per_chunk={chunk}"
            )
        prefix_settings = PrefixTraining.parse(prefix)
        if prefix_settings is not None and critic_windows_per_rollout > 1:
            raise ValueError(
                "prefix training cannot be combined with critic_windows_per_rollout > 1; set it to 1"
            )
        if prefix_settings is not None and prefix_settings.in_first_chunk:
            stride = codec.temporal_stride
            longest = 1 + math.ceil((prefix_settings.max_pixel_frames - 1) / stride)  # latent frames
            if longest >= chunk:
                raise ValueError(
                    f"prefix.in_first_chunk: {prefix_settings.max_pixel_frames} pixel frames encode to {longest} "
                    f"latent frames, not fewer than a chunk ({chunk}); give stage.prefix.pixel_frames that fit "
                    "inside the first chunk"
                )
        lora_settings = LoraSettings.parse(lora)
        if lora_settings is not None:
            apply_lora(generator, lora_settings)  # before the EMA copy is made
        super().__init__(
            generator,
            text_encoder,
            codec,
            sampler,
            student,
            rollout_frames=rollout_frames,
            default_cache_window=window_frames,
            quality_metric=quality_metric,
            negative_prompt=negative_prompt,
        )
        self.automatic_optimization = False
        self.window_frames = window_frames
        self.save_hyperparameters(
            ignore=[
                "generator",
                "teacher",
                "text_encoder",
                "codec",
                "sampler",
                "generator_optimizer",
                "critic_optimizer",
                "reinjector",
                "quality_metric",
                "window_reencoder",
                "lora",
                "prefix",
                "student",
            ]
        )
        self.hparams["student"] = student.as_dict()
        self.teacher = teacher.requires_grad_(False).eval()
        self.critic = ScoreCritic.from_teacher(teacher)
        if critic_checkpoint is not None:
            load_submodule(self.critic.model, critic_checkpoint, prefix="critic.model.")
        if lora_settings is not None:
            apply_lora(self.critic.model, lora_settings)
        self.hparams["lora"] = None if lora_settings is None else lora_settings.as_dict()
        self.prefix = prefix_settings
        self.hparams["prefix"] = None if prefix_settings is None else prefix_settings.as_dict()
        self.window_sampler = WindowSampler(window_frames, window_mode, chunk)
        self.reinjector = reinjector or NoiseReinjector()
        self.window_reencoder = window_reencoder
        self.generator_optimizer_factory = generator_optimizer
        self.critic_optimizer_factory = critic_optimizer
        # (context, windows) of the rollout shared by the current critic group
        self._critic_rollout: tuple[torch.Tensor, list[tuple[torch.Tensor, int]]] | None = None
        # (first step of the current critic group, the prompts of its first batch)
        self._critic_group_prompts: tuple[int, list[str]] | None = None

    # -- parallelism ---------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Shard the networks with FSDP2 when the strategy provides a device mesh (``trainer=fsdp``).

        Lightning may call this more than once: modules already sharded (or already checkpointed)
        are left as they are. Without a mesh, only activation checkpointing applies.

        Raises:
            ValueError: For ``mixed_precision`` without a device mesh, or if a trainable parameter
                ends up unsharded.
        """
        configure_stage_modules(
            self,
            self.device_mesh,
            trained=[self.generator, self.critic.model],
            frozen=[self.teacher, self.ema.module],
            mixed_precision=self.student.mixed_precision,
            activation_checkpointing=self.student.activation_checkpointing,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _rollout_to(
        self,
        context: torch.Tensor,
        rng: torch.Generator,
        end: int,
        grad_from_frame: int,
        micro_batch: int = 0,
        prefix: torch.Tensor | None = None,
    ) -> list:
        """The student's chunks up to latent frame ``end``, each at an exit step drawn from ``rng``.

        Chunks from ``grad_from_frame`` on keep the graph of their exit step. ``micro_batch`` is the
        index of this batch among the update's ``accumulate_grad_batches``: the rollout noise is
        that of its rows of the update's global batch. A ``prefix`` ``(B, C, n, h, w)`` of clean
        latents is written into the cache first and returned as the first chunks; the student
        generates the frames from ``n`` to ``end``. With ``prefix.in_first_chunk`` settings the
        prefix (fewer frames than a chunk) is held clean at timestep 0 inside the first chunk instead.
        """
        cache = self._new_cache(self.generator, context.shape[0])
        num_steps = len(self.sampler.timesteps)
        in_chunk = prefix is not None and self.prefix is not None and self.prefix.in_first_chunk
        written = 0 if prefix is None or in_chunk else prefix.shape[2]
        num_chunks = (end - written) // self.generator.config.num_frames_per_chunk
        if self.hparams.exit_step_draw == "per_rollout":
            exit_steps = torch.randint(0, num_steps, (1,), generator=rng).expand(num_chunks)
        else:
            exit_steps = torch.randint(0, num_steps, (num_chunks,), generator=rng)
        noise_fn = self._noise_fn(rng, context.shape[0], micro_batch, self.student.accumulate_grad_batches)
        given = []
        if written:
            given = list(write_prefix(self.generator, context, cache, prefix, self.sampler, rng, noise_fn))
        return given + list(
            stream_rollout(
                self.generator,
                context,
                cache,
                end - cache.num_frames,
                self.student.latent_shape,
                self.sampler,
                rng,
                exit_steps=exit_steps.tolist(),
                grad_from_frame=grad_from_frame,
                noise_fn=noise_fn,
                first_frames=prefix if in_chunk else None,
            )
        )

    def _rollout_window(
        self,
        context: torch.Tensor,
        rng: torch.Generator,
        keep_graph: bool,
        micro_batch: int = 0,
        prefix: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Roll the student out to the end of a window; return ``(window (B, C, K, h, w), start)``.

        Without a prefix the window is drawn by the window sampler. With a prefix of ``n`` latent
        frames the window holds its last :func:`given_in_window` frames and the generated frames
        that follow them.
        """
        if prefix is None:
            start = self.window_sampler.sample(self.rollout_frames, rng)
        else:
            given = given_in_window(
                prefix.shape[2], self.window_frames, self.generator.config.num_frames_per_chunk
            )
            start = prefix.shape[2] - given
        end = start + self.window_frames
        chunks = self._rollout_to(context, rng, end, start if keep_graph else end, micro_batch, prefix)
        window = torch.cat([c.latents for c in chunks if c.frame_offset >= start], dim=2)  # (B, C, K, h, w)
        return self._as_seen_by_the_teacher(chunks, window, start), start

    def _prefix_latents(self, batch: dict[str, Any], step: int) -> torch.Tensor | None:
        """The clean latents ``(B, C, n, h, w)`` that step ``step``'s rollouts start from, or ``None``.

        Raises:
            ValueError: If the step draws a prefix and the batch has no ``"video"`` clips of that
                many frames.
        """
        if self.prefix is None:
            return None
        frames = self.prefix.draw(self.student.seed, step)
        if frames == 0:
            return None
        video = batch.get("video")
        if video is None or video.shape[2] < frames:
            have = "no 'video'" if video is None else f"clips of {video.shape[2]} frames"
            raise ValueError(
                f"prefix training gives {frames} real frames, but the batches carry {have}; give the data "
                f"module clips of at least {self.prefix.max_pixel_frames} frames (the built-in world: "
                f"data.num_frames={self.prefix.max_pixel_frames})"
            )
        # whole latent frames inside the first chunk (fewer than a chunk: checked at construction), or whole chunks
        unit = 1 if self.prefix.in_first_chunk else self.generator.config.num_frames_per_chunk
        clip, _ = hold_to_chunks(video[:, :, :frames], self.codec.temporal_stride, unit)  # (B, 3, F', H, W)
        with torch.no_grad():
            return self.codec.encode(clip.to(self.device))

    @torch.no_grad()
    def _shared_critic_windows(
        self, first_step: int, size: int, context: torch.Tensor
    ) -> list[tuple[torch.Tensor, int]]:
        """The ``size`` windows ``(B, C, K, h, w)`` (with their start frames) of one detached rollout.

        Everything is drawn from the generator of ``first_step``, so recomputing a group (after a
        resume) gives the same windows.
        """
        rng = self._rng(first_step)
        starts = [self.window_sampler.sample(self.rollout_frames, rng) for _ in range(size)]
        end = max(starts) + self.window_frames
        chunks = self._rollout_to(context, rng, end, grad_from_frame=end)
        latents = torch.cat([c.latents for c in chunks], dim=2)  # (B, C, end, h, w)
        return [
            (self._reencode(latents[:, :, :start], latents[:, :, start : start + self.window_frames]), start)
            for start in starts
        ]

    def _reencode(self, prefix: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """The window with its first frame re-encoded (:class:`~sfpp.diffusion.reencode.WindowReencoder`)."""
        if self.window_reencoder is None:
            return window
        return self.window_reencoder(prefix, window, self.codec, self.generator.config.num_frames_per_chunk)

    def _as_seen_by_the_teacher(self, chunks: list, window: torch.Tensor, start: int) -> torch.Tensor:
        """:meth:`_reencode` with the prefix taken from the rollout's chunks (only when it applies)."""
        if self.window_reencoder is None or not self.window_reencoder.applies(self.codec, start):
            return window
        prefix = torch.cat(
            [c.latents.detach() for c in chunks if c.frame_offset < start], dim=2
        )  # (B, C, s, h, w)
        return self._reencode(prefix, window)

    def _critic_window(
        self, step: int, prompts: list[str]
    ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Generator]:
        """Window, start, context and re-noising generator of critic step ``step`` from its group's rollout.

        The group's rollout is conditioned on the prompts of its first step's batch; they travel in
        the checkpoint (:meth:`on_save_checkpoint`), so a run resumed inside a group recomputes the
        same rollout.
        """
        hp = self.hparams
        first, index, size = critic_group(
            step, hp.critic_updates_per_generator, hp.critic_warmup_steps, hp.critic_windows_per_rollout
        )
        if self._critic_group_prompts is None or self._critic_group_prompts[0] != first:
            self._critic_group_prompts = (first, prompts)
            self._critic_rollout = None
        if self._critic_rollout is None:
            context, _ = self._contexts(self._critic_group_prompts[1])
            self._critic_rollout = (context, self._shared_critic_windows(first, size, context))
        context, windows = self._critic_rollout
        window, start = windows[index]
        if index == size - 1:
            self._critic_rollout = None  # the group is done; free its rollout
        rng = step_generator(self.student.seed, CRITIC_REINJECTION_STREAM, step)
        return window, start, context, rng

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the prompts of the current critic group (if any), for an exact resume inside it."""
        super().on_save_checkpoint(checkpoint)
        if self._critic_group_prompts is not None:
            checkpoint["dmd_critic_group"] = {
                "first_step": self._critic_group_prompts[0],
                "prompts": list(self._critic_group_prompts[1]),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the draw scheme and the prompts of the critic group a checkpoint was written in."""
        super().on_load_checkpoint(checkpoint)
        group = checkpoint.get("dmd_critic_group")
        if group is not None:
            self._critic_group_prompts = (int(group["first_step"]), list(group["prompts"]))

    # -- training ------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One critic or generator update (see :func:`update_kind`), or one micro-batch of it."""
        began = time.perf_counter()
        step = self.global_step
        accumulate = self.student.accumulate_grad_batches
        micro = batch_idx % accumulate
        kind = update_kind(step, self.hparams.critic_updates_per_generator, self.hparams.critic_warmup_steps)
        generator_opt, critic_opt = self.optimizers()
        rng = self._rng(step)
        context, null_context = self._contexts(list(batch["prompt"]))
        given, given_mask = 0, None
        if kind == "critic" and self.hparams.critic_windows_per_rollout > 1:
            window, start, context, rng = self._critic_window(step, list(batch["prompt"]))
        else:
            prefix = self._prefix_latents(batch, step)
            window, start = self._rollout_window(
                context, rng, keep_graph=kind == "generator", micro_batch=micro, prefix=prefix
            )
            if prefix is not None:
                given = prefix.shape[2] - start
        batch_size = window.shape[0]
        x_t, noise, timestep, sigma = self.reinjector(
            window.detach(), rng, *self._rows_of_global_batch(batch_size, micro, accumulate)
        )
        if given:  # the given frames stay clean, at timestep 0, and out of the losses
            x_t, timestep, sigma, given_mask = keep_given_clean(window, x_t, timestep, sigma, given)
        network, optimizer = (
            (self.critic, critic_opt) if kind == "critic" else (self.generator, generator_opt)
        )
        if kind == "critic":
            flow = self.critic(x_t, timestep, context)
            loss = flow_matching_loss(flow, window.detach(), noise, mask=given_mask)
            metrics = {}
        else:
            real_x0, fake_x0 = real_and_fake_x0(
                self.teacher,
                self.critic,
                x_t,
                timestep,
                sigma,
                context,
                null_context,
                self.hparams.real_guidance_scale,
            )
            mask = None
            if self.window_reencoder is not None:
                mask = self.window_reencoder.gradient_mask(
                    self.codec,
                    start,
                    self.window_frames,
                    self.generator.config.num_frames_per_chunk,
                    window.device,
                )
            if given_mask is not None:
                mask = given_mask if mask is None else mask & given_mask
            # given frames equal the teacher's estimate exactly: the normaliser leaves them out
            loss, metrics = dmd_loss(window, real_x0, fake_x0, gradient_mask=mask, normaliser_mask=given_mask)
        if micro == 0:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss / accumulate)  # the mean over the update's batches
        if micro == accumulate - 1:
            self._clip(network, kind, self.student.grad_clip_norm, batch_size)
            optimizer.step()
            # Free the gradients now: the next updates (of the other network) need the memory.
            optimizer.zero_grad(set_to_none=True)
            if kind == "generator":
                self.ema.update(self.generator, self._generator_updates(step))
        self.log(f"train/{kind}_loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/window_start_frame", float(start), batch_size=batch_size)
        if self.prefix is not None:
            self.log("train/given_frames", float(given), batch_size=batch_size)
        self.log("train/video_std", window.detach().float().std(), batch_size=batch_size)
        self.log("train/seconds_per_step", time.perf_counter() - began, batch_size=batch_size)

    def _generator_updates(self, step: int) -> int:
        """Generator updates done before optimisation step ``step``."""
        warm, cycle = self.hparams.critic_warmup_steps, self.hparams.critic_updates_per_generator + 1
        return max(0, step - warm) // cycle

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Generator and critic optimisers (in that order), built after sharding."""
        generator_params = [p for p in self.generator.parameters() if p.requires_grad]
        critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        return [
            self.generator_optimizer_factory(params=generator_params),
            self.critic_optimizer_factory(params=critic_params),
        ]
