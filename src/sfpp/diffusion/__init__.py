"""Flow-matching diffusion math shared by the teacher, the student, the critic and the rollouts."""

from sfpp.diffusion.lengths import Rounding, VideoTiming, parse_length
from sfpp.diffusion.losses import (
    dmd_loss,
    flow_matching_loss,
    ode_regression_loss,
    real_and_fake_x0,
)
from sfpp.diffusion.reinject import NoiseReinjector

# The function `rollout` stays in its module (sfpp.diffusion.rollout.rollout): exporting it here would
# shadow the module and break config targets such as sfpp.diffusion.rollout.FewStepSampler.
from sfpp.diffusion.rollout import FewStepSampler, RolloutChunk, stream_rollout
from sfpp.diffusion.schedule import (
    NUM_TRAIN_TIMESTEPS,
    FlowMatchSchedule,
    SigmaLike,
    add_noise,
    euler_step,
    expand_sigma,
    flow_from_x0,
    flow_target,
    noise_from_x0,
    shift_sigma,
    sigma_from_timestep,
    timestep_from_sigma,
    unshift_sigma,
    x0_from_flow,
    x0_from_noise,
)
from sfpp.diffusion.training import MinSNRWeighting, TrainingSigmas
from sfpp.diffusion.window import WindowSampler

__all__ = [
    "FewStepSampler",
    "RolloutChunk",
    "stream_rollout",
    "FlowMatchSchedule",
    "NUM_TRAIN_TIMESTEPS",
    "SigmaLike",
    "add_noise",
    "euler_step",
    "expand_sigma",
    "flow_from_x0",
    "flow_target",
    "noise_from_x0",
    "shift_sigma",
    "sigma_from_timestep",
    "timestep_from_sigma",
    "TrainingSigmas",
    "MinSNRWeighting",
    "unshift_sigma",
    "x0_from_flow",
    "x0_from_noise",
    "Rounding",
    "VideoTiming",
    "parse_length",
    "dmd_loss",
    "flow_matching_loss",
    "ode_regression_loss",
    "real_and_fake_x0",
    "NoiseReinjector",
    "WindowSampler",
]
