"""Video files: the mp4 writer works from a worker thread and never runs Python in a forked child."""

from __future__ import annotations

import threading

import imageio.v2 as imageio
import torch

from sfpp.io.video import StreamingVideoWriter


def test_ffmpeg_is_started_without_a_preexec_fn():
    from imageio_ffmpeg._utils import _popen_kwargs

    assert _popen_kwargs(prevent_sigint=True)["preexec_fn"] is None


def test_a_writer_in_a_worker_thread_writes_every_frame(tmp_path):
    path = tmp_path / "thread.mp4"
    video = torch.linspace(-1, 1, 3 * 12 * 16 * 16).reshape(3, 12, 16, 16)  # (3, F, H, W)

    def write():
        with StreamingVideoWriter(path, fps=8, upscale=4) as writer:
            for frame in range(0, 12, 3):
                writer.write(video[:, frame : frame + 3])

    workers = [threading.Thread(target=write)] + [
        threading.Thread(target=torch.randn, args=(64, 64)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    assert imageio.get_reader(path).count_frames() == 12
