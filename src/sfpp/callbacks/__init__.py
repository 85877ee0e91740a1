"""Lightning callbacks."""

from sfpp.callbacks.checkpoint import FinalStepCheckpoint
from sfpp.callbacks.guards import DivergenceError, DivergenceGuard
from sfpp.callbacks.progress_log import ProgressLog
from sfpp.callbacks.video_samples import VideoSampleCallback

__all__ = ["DivergenceError", "DivergenceGuard", "FinalStepCheckpoint", "ProgressLog", "VideoSampleCallback"]
