"""Reading and writing videos and images."""

from sfpp.io.video import StreamingVideoWriter, to_uint8_frames, write_frame_grid, write_video

__all__ = ["StreamingVideoWriter", "to_uint8_frames", "write_frame_grid", "write_video"]
