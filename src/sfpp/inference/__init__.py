"""Long-video inference: streamed generation into an mp4, prompt switches, bounded metric records."""

from sfpp.inference.frame_record import FrameRecord
from sfpp.inference.generator import ChunkInfo, GenerationPlan, GenerationResult, VideoGenerator
from sfpp.inference.metrics import MeanFlowMagnitude, evaluate_metric, evaluate_segments
from sfpp.inference.prompt_schedule import PromptSegment, parse_switch, plan_segments

__all__ = [
    "ChunkInfo",
    "FrameRecord",
    "GenerationPlan",
    "GenerationResult",
    "MeanFlowMagnitude",
    "PromptSegment",
    "VideoGenerator",
    "evaluate_metric",
    "evaluate_segments",
    "parse_switch",
    "plan_segments",
]
