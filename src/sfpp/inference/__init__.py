"""Long-video inference: streamed generation into an mp4, prompt switches, bounded metric records."""

from sfpp.inference.frame_record import FrameRecord
from sfpp.inference.generator import ChunkInfo, GenerationPlan, GenerationResult, VideoGenerator
from sfpp.inference.metrics import MeanFlowMagnitude, evaluate_metric, evaluate_segments
from sfpp.inference.prefix import VideoPrefix, encode_prefix, fit_frames, read_frames
from sfpp.inference.prompt_schedule import PromptSegment, parse_switch, plan_segments

__all__ = [
    "ChunkInfo",
    "FrameRecord",
    "GenerationPlan",
    "GenerationResult",
    "MeanFlowMagnitude",
    "PromptSegment",
    "VideoGenerator",
    "VideoPrefix",
    "encode_prefix",
    "evaluate_metric",
    "evaluate_segments",
    "fit_frames",
    "parse_switch",
    "plan_segments",
    "read_frames",
]
