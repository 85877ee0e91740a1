"""Rewards for the GRPO stage: videos and prompts in, one score per video out (higher is better).

- :class:`Reward`: the interface; :class:`WeightedSum` combines rewards with weights.
- :class:`FlowContinuityReward`: optical-flow continuity, penalising cuts, jumps and freezes;
  :func:`render_flow` colours the flow for logging next to the video.
"""

from sfpp.rewards.base import Reward, WeightedSum
from sfpp.rewards.flow_continuity import ContinuityTerms, FlowContinuityReward, render_flow

__all__ = ["ContinuityTerms", "FlowContinuityReward", "Reward", "WeightedSum", "render_flow"]
