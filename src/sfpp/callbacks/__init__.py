"""Lightning callbacks."""

from sfpp.callbacks.video_samples import VideoSampleCallback

__all__ = ["VideoSampleCallback"]
