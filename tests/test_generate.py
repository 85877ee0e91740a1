"""Long-video generation: sfpp.generate (CLI and API) and sfpp.inference."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import pytest
import torch
from omegaconf import DictConfig, open_dict

from sfpp.diffusion.lengths import VideoTiming
from sfpp.diffusion.rollout import FewStepSampler
from sfpp.generate import compose_config, generate, generate_video, load_generator, video_name
from sfpp.inference import FrameRecord, MeanFlowMagnitude, evaluate_metric, plan_segments
from sfpp.models import build_model
from sfpp.world import WorldTextEncoder

PROMPT = "a red circle bouncing on a dark background"
OTHER_PROMPT = "a blue square bouncing on a dark background"
# The tiny flavour, made to fit the pixel codec (3 channels) and the world text encoder (64).
TINY_STUDENT = [
    "model=tiny",
    "+model.in_channels=3",
    "+model.out_channels=3",
    "+model.text_dim=64",
    "model.attention_backend=sdpa",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake Lightning checkpoint: a random tiny causal student (EMA) and a world text encoder."""
    torch.manual_seed(0)
    student = build_model(
        "tiny",
        causal=True,
        num_frames_per_chunk=2,
        attention_backend="sdpa",
        in_channels=3,
        out_channels=3,
        text_dim=64,
        prediction_type="x0",
    )
    text_encoder = WorldTextEncoder(embed_dim=64, max_length=16)
    state = {f"ema.module.{key}": value for key, value in student.state_dict().items()}
    state |= {f"text_encoder.{key}": value for key, value in text_encoder.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 0}, path)
    return path


def _cfg(checkpoint: Path, out_dir: Path, *overrides: str) -> DictConfig:
    return compose_config(
        [
            *TINY_STUDENT,
            f"checkpoint={checkpoint}",
            f"teacher_ckpt={checkpoint}",
            f"out_dir={out_dir}",
            "device=cpu",
            "progress=false",
            "upscale=2",
            *overrides,
        ]
    )


def _latents(checkpoint: Path, out_dir: Path, *overrides: str) -> dict[int, torch.Tensor]:
    """Run the CLI body and return the chunks' latents by absolute frame offset."""
    chunks: dict[int, torch.Tensor] = {}
    generate(
        _cfg(checkpoint, out_dir, *overrides),
        on_chunk=lambda info: chunks.__setitem__(info.chunk.frame_offset, info.chunk.latents.clone()),
    )
    return chunks


def _mp4_frames(path: Path) -> int:
    return len(imageio.mimread(path, memtest=False))


# -- config ----------------------------------------------------------------------------------------


def test_generate_config_composes() -> None:
    cfg = compose_config(["checkpoint=student.ckpt", f"prompt={PROMPT}", "length=100s"])
    assert cfg.model.flavour == "toy" and cfg.model.causal and cfg.model.num_frames_per_chunk == 2
    assert cfg.model.prediction_type == "x0"
    assert cfg.codec._target_ == "sfpp.codecs.PixelCodec"
    assert cfg.text.prefix == "text_encoder." and cfg.text.checkpoint == cfg.teacher_ckpt
    assert cfg.prefix == "ema.module." and cfg.prompt == PROMPT and cfg.length == "100s"
    import hydra

    assert hydra.utils.instantiate(cfg.sampler) == FewStepSampler.from_steps([1000, 750, 500, 250], shift=5.0)
    assert set(cfg.metrics) == {"world_objects", "flow"}


def test_generate_config_composes_at_paper_scale() -> None:
    cfg = compose_config(
        [
            "checkpoint=student.ckpt",
            "model=wan_1_3b",
            "model.num_frames_per_chunk=3",
            "model.prediction_type=flow",
            "codec=wan",
            "text=umt5",
            "wan_dir=/models/wan2.1",
            "frame_size=[480,832]",
            "fps=16",
            "metrics.world_objects=null",
        ]
    )
    assert cfg.codec.path == "/models/wan2.1/vae" and cfg.text.path == "/models/wan2.1"
    assert cfg.model.causal and cfg.model.flavour == "wan_1_3b" and cfg.metrics.world_objects is None


# -- the CLI body / API ----------------------------------------------------------------------------


def test_writes_mp4_and_json_with_metrics(checkpoint: Path, tmp_path: Path) -> None:
    [result] = generate(_cfg(checkpoint, tmp_path, f"prompt={PROMPT}", "length=2.5s", "upscale=8"))
    assert result.video_path == tmp_path / f"{video_name(0, PROMPT, 0)}.mp4"
    # 2.5 s at 8 fps = 21 frames -> 10 chunks of 2 latent frames (rounded down) = 20 frames.
    assert _mp4_frames(result.video_path) == 20
    assert imageio.get_reader(result.video_path).get_data(0).shape == (128, 128, 3)
    summary = json.loads(result.json_path.read_text())
    assert summary == result.summary
    assert summary["completed"] and summary["prompt"] == PROMPT and summary["seed"] == 0
    assert summary["length"] == "2.5s" and summary["latent_frames"] == 20 and summary["frames"] == 20
    assert summary["frames_written"] == 20 and summary["duration_seconds"] == pytest.approx(19 / 8)
    assert summary["seconds_taken"] > 0 and summary["generation_frames_per_second"] > 0
    assert summary["checkpoint"].startswith(str(checkpoint))
    for key in ("world_objects/clean_frame_fraction", "world_objects/shape_accuracy", "flow/mean_flow_px"):
        assert key in summary["metrics"], summary["metrics"]
    assert summary["metrics_skipped"] == {}
    assert summary["metric_frames"] == 20 and summary["metric_frame_stride"] == 1


def test_same_seed_same_video(checkpoint: Path, tmp_path: Path) -> None:
    args = (f"prompt={PROMPT}", "length=12")
    first = _latents(checkpoint, tmp_path / "a", *args, "seed=5")
    again = _latents(checkpoint, tmp_path / "b", *args, "seed=5")
    other = _latents(checkpoint, tmp_path / "c", *args, "seed=6")
    assert sorted(first) == list(range(0, 12, 2))
    assert all(torch.equal(first[i], again[i]) for i in first)
    assert not torch.equal(first[0], other[0])
    name = f"{video_name(0, PROMPT, 5)}.json"
    metrics_a = json.loads((tmp_path / "a" / name).read_text())["metrics"]
    assert metrics_a == json.loads((tmp_path / "b" / name).read_text())["metrics"]


def test_memory_does_not_grow_with_length(checkpoint: Path, tmp_path: Path) -> None:
    seen: dict[int, tuple] = {}

    def measure(info) -> None:
        if info.index in (9, 39):  # after 10 and 40 chunks
            seen[info.index] = (
                tuple(info.cache.keys.shape),
                tuple(info.cache.values.shape),
                info.cache.nbytes,
                info.record.nbytes,
            )

    generate(
        _cfg(checkpoint, tmp_path, f"prompt={PROMPT}", "length=80", "max_metric_frames=16"), on_chunk=measure
    )
    assert seen[9] == seen[39]
    summary = json.loads(next(tmp_path.glob("*.json")).read_text())
    # 80 frames kept at most 16: every 5th frame.
    assert summary["metric_frame_stride"] == 5 and summary["metric_frames"] == 16


def test_too_long_request_fails_before_any_work(checkpoint: Path, tmp_path: Path) -> None:
    cfg = _cfg(checkpoint, tmp_path / "out", f"prompt={PROMPT}", "length=200s")
    with pytest.raises(ValueError, match=r"1024 latent frames = 1024 frames = 127\.9 s at 8 fps"):
        generate(cfg)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_fails_naming_the_path(checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "last.ckpt"
    cfg = _cfg(checkpoint, tmp_path / "out", f"prompt={PROMPT}", "length=4")
    with open_dict(cfg):
        cfg.checkpoint = str(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint={missing}")):
        generate(cfg)
    assert not (tmp_path / "out").exists()


def test_bad_prompts_fail_before_any_work(checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        generate(_cfg(checkpoint, tmp_path / "out", f"prompts_file={empty}", "length=4"))
    with pytest.raises(ValueError, match="exactly one of"):
        generate(_cfg(checkpoint, tmp_path / "out", "length=4"))
    # The second video's unknown word stops the request before the first video starts.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPT}\na purple circle bouncing on a dark background\n")
    with pytest.raises(ValueError, match="'purple'.*not in the world's vocabulary"):
        generate(_cfg(checkpoint, tmp_path / "out", f"prompts_file={prompts}", "length=4"))
    with pytest.raises(ValueError, match="prompt switch"):
        generate(_cfg(checkpoint, tmp_path / "out", f"prompt={PROMPT}", "length=4", "switch=[10s:x]"))
    assert not (tmp_path / "out").exists()


def test_prompt_switch_changes_later_frames_only(checkpoint: Path, tmp_path: Path) -> None:
    args = (f"prompt={PROMPT}", "length=20")
    plain = _latents(checkpoint, tmp_path / "plain", *args)
    # 1 s at 8 fps: a 9-frame video, 4.5 chunks, rounded to the nearest (up) = latent frame 10.
    switched = _latents(checkpoint, tmp_path / "switched", *args, f"switch=[1s:{OTHER_PROMPT}]")
    same = _latents(checkpoint, tmp_path / "same", *args, f"switch=[1s:{PROMPT}]")
    assert all(torch.equal(plain[i], switched[i]) for i in range(0, 10, 2))
    assert all(not torch.equal(plain[i], switched[i]) for i in range(10, 20, 2))
    assert all(torch.equal(plain[i], same[i]) for i in plain)  # refreshing the text K/V alone changes nothing
    summary = json.loads(next((tmp_path / "switched").glob("*.json")).read_text())
    assert [p["prompt"] for p in summary["prompts"]] == [PROMPT, OTHER_PROMPT]
    assert summary["prompts"][1]["start_latent_frame"] == 10
    assert summary["prompts"][1]["start_seconds"] == pytest.approx(1.25)
    assert [s["num_frames"] for s in summary["segment_metrics"]] == [10, 10]


def test_switch_keeps_the_self_attention_cache(checkpoint: Path, tmp_path: Path) -> None:
    """After a switch the video continues its past: it differs from a fresh start on the new prompt."""
    switched = _latents(
        checkpoint, tmp_path / "a", f"prompt={PROMPT}", "length=12", f"switch=[4:{OTHER_PROMPT}]"
    )
    fresh = _latents(checkpoint, tmp_path / "b", f"prompt={OTHER_PROMPT}", "length=12")
    assert not torch.equal(switched[4], fresh[4])


def test_interrupted_generation_leaves_a_playable_mp4(checkpoint: Path, tmp_path: Path) -> None:
    def interrupt(info) -> None:
        if info.index == 4:  # after 5 chunks = 10 frames
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(_cfg(checkpoint, tmp_path, f"prompt={PROMPT}", "length=40"), on_chunk=interrupt)
    video = tmp_path / f"{video_name(0, PROMPT, 0)}.mp4"
    assert _mp4_frames(video) == 10
    summary = json.loads(video.with_suffix(".json").read_text())
    assert not summary["completed"] and summary["frames_written"] == 10 and summary["frames"] == 40
    assert "KeyboardInterrupt" in summary["error"] and "metrics" not in summary


def test_prompts_file_gives_one_video_per_prompt_from_the_command_line(
    checkpoint: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# two world prompts\n{PROMPT}\n\n{OTHER_PROMPT}\n")
    out = tmp_path / "videos"
    args = [*TINY_STUDENT, f"checkpoint={checkpoint}", f"teacher_ckpt={checkpoint}", f"out_dir={out}"]
    args += [f"prompts_file={prompts}", "length=6", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sfpp.generate", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for index, prompt in enumerate([PROMPT, OTHER_PROMPT]):
        video = out / f"{video_name(index, prompt, 0)}.mp4"
        assert _mp4_frames(video) == 6
        assert json.loads(video.with_suffix(".json").read_text())["prompt"] == prompt


def test_api_from_python(checkpoint: Path, tmp_path: Path) -> None:
    generator = load_generator(
        checkpoint, TINY_STUDENT, teacher_ckpt=checkpoint, device="cpu", progress=False, upscale=2
    )
    assert generator.max_latent_frames == 1024
    results = generate_video(generator, [PROMPT, OTHER_PROMPT], 4, tmp_path, seed=1)
    assert [r.summary["prompt"] for r in results] == [PROMPT, OTHER_PROMPT]
    assert all(r.metrics and r.video_path.is_file() for r in results)


# -- parts ----------------------------------------------------------------------------------------


def test_plan_segments_rounds_switches_to_chunks_and_checks_order() -> None:
    timing = VideoTiming(fps=8, temporal_stride=1, num_frames_per_chunk=2)
    segments = plan_segments("a", ["1s:b", "20:c"], 40, timing)
    assert [(s.prompt, s.start_frame, s.num_frames) for s in segments] == [
        ("a", 0, 10),
        ("b", 10, 10),
        ("c", 20, 20),
    ]
    for bad in (["20:b", "10:c"], ["40:b"], ["b"], ["3:b"]):
        with pytest.raises(ValueError, match="switch"):
            plan_segments("a", bad, 40, timing)


def test_frame_record_is_bounded_and_downsamples() -> None:
    record = FrameRecord(num_frames=10, max_frames=4, max_side=8)
    for start in range(0, 10, 3):
        count = min(3, 10 - start)
        record.add(torch.linspace(-1, 1, count).view(1, count, 1, 1).expand(3, count, 16, 32))
    assert record.stride == 3 and record.num_kept == 4
    video = record.video()  # frames 0, 3, 6, 9
    assert video.shape == (3, 4, 4, 8)
    assert record.video(3, 7).shape[1] == 2  # frames 3 and 6
    assert record.nbytes == 4 * 3 * 4 * 8
    assert not FrameRecord(10, 0).enabled


def test_metrics_accept_callables_and_torchmetrics_style_objects() -> None:
    videos = torch.zeros(1, 3, 4, 16, 16)
    videos[:, :, :, 4:8, 4:8] = 1.0

    class Stateful:
        def reset(self) -> None:
            self.seen = 0

        def update(self, videos: torch.Tensor) -> None:
            self.seen += videos.shape[0]

        def compute(self) -> torch.Tensor:
            return torch.tensor(float(self.seen))

    assert evaluate_metric(Stateful(), "stability", videos, ["x"]) == {"stability": 1.0}
    assert evaluate_metric(MeanFlowMagnitude(), "flow", videos, ["x"]) == {
        "flow/mean_flow_px": pytest.approx(0.0, abs=1e-3)
    }
    with pytest.raises(ValueError):
        MeanFlowMagnitude()(videos[:, :, :1], ["x"])
