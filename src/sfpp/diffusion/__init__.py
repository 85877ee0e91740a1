"""Flow-matching diffusion math shared by the teacher, the student, the critic and the rollouts."""

from sfpp.diffusion.lengths import Rounding, VideoTiming, parse_length
from sfpp.diffusion.losses import (
    dmd_loss,
    flow_matching_loss,
    foreground_weights,
    ode_regression_loss,
    real_and_fake_x0,
)
from sfpp.diffusion.reinject import NoiseReinjector

# The function `rollout` stays in its module (sfpp.diffusion.rollout.rollout): exporting it here would
# shadow the module and break config targets such as sfpp.diffusion.rollout.FewStepSampler.
from sfpp.diffusion.rollout import FewStepSampler, RolloutChunk, stream_rollout
from sfpp.diffusion.schedule import (
    FlowMatchSchedule,
    SigmaLike,
    add_noise,
    euler_step,
    expand_sigma,
    flow_from_x0,
    flow_target,
    min_snr_weight,
    noise_from_x0,
    shift_sigma,
    training_sigmas,
    unshift_sigma,
    x0_from_flow,
    x0_from_noise,
)
from sfpp.diffusion.window import WindowSampler

__all__ = [
    "FewStepSampler",
    "RolloutChunk",
    "stream_rollout",
    "FlowMatchSchedule",
    "SigmaLike",
    "add_noise",
    "euler_step",
    "expand_sigma",
    "flow_from_x0",
    "flow_target",
    "min_snr_weight",
    "noise_from_x0",
    "shift_sigma",
    "training_sigmas",
    "unshift_sigma",
    "x0_from_flow",
    "x0_from_noise",
    "Rounding",
    "VideoTiming",
    "parse_length",
    "dmd_loss",
    "flow_matching_loss",
    "foreground_weights",
    "ode_regression_loss",
    "real_and_fake_x0",
    "NoiseReinjector",
    "WindowSampler",
]
