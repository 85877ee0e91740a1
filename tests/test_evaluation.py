"""Long-video evaluation: summary numbers, curves and their plot."""

import imageio.v2 as imageio
import numpy as np
import torch

from sfpp.apps.evaluation import evaluate_long_videos, plot_curves
from sfpp.world import prompt_of, render, sample_spec


def world_videos(count=2, frames=48):
    specs = [sample_spec(seed) for seed in range(count)]
    return torch.stack([torch.from_numpy(render(s, frames)) for s in specs]), [prompt_of(s) for s in specs]


def test_real_videos_score_as_real_and_a_fading_video_drops(tmp_path):
    videos, prompts = world_videos()
    real = evaluate_long_videos(videos, prompts, window_frames=8)
    assert real.summary["visual_stability"] >= 90
    assert real.summary["world_clean_frame_fraction"] == 1.0
    assert real.stability_curve.shape == real.quality_curve.shape == (6,)
    assert real.summary["dynamic_degree"] > 0.3
    # over-exposure growing along the video: stability falls window by window, quality worsens
    ramp = torch.linspace(0, 1.2, videos.shape[2])[None, None, :, None, None]
    faded = evaluate_long_videos((videos + ramp).clamp(-1, 1), prompts, window_frames=8)
    assert faded.summary["visual_stability"] < real.summary["visual_stability"] - 20
    assert faded.stability_curve[-1] < faded.stability_curve[1]
    assert faded.quality_curve[-1] > real.quality_curve[-1]
    png = plot_curves(
        {"real": real, "over-exposed": faded}, tmp_path / "curves.png", horizon_frames=8, fps=16
    )
    image = imageio.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 10  # something was drawn
