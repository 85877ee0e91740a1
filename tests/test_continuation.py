"""The continuation measurement (python -m sfpp.apps.continuation) on tiny students."""

import json

import pytest
import torch

from sfpp.apps.continuation import (
    ROWS,
    continuation_stages,
    continue_clips,
    evaluate_continuation,
    fd_to_continuation,
    main,
    seam_ratios,
)
from sfpp.apps.continuation_report import (
    continuation_findings,
    continuation_page,
    plot_continuation,
    write_strips,
)
from sfpp.diffusion.rollout import rollout, write_prefix
from sfpp.world import ground_truth, heldout_prompts
from test_generate import TINY_STUDENT, checkpoint  # noqa: F401  (the module's fixture)

PROMPTS = heldout_prompts()[:2]


def test_stages_train_both_students_from_the_baseline_against_one_teacher(tmp_path):
    stages = {s.name: s for s in continuation_stages(tmp_path, steps=40, teacher_steps=20)}
    teacher = stages["continuation_teacher"]
    assert (
        "experiment=toy_teacher_prefix" in teacher.overrides and "trainer.max_steps=20" in teacher.overrides
    )
    for key in ("plain", "prefix"):
        stage = stages[ROWS[key][1]]
        assert f"experiment={ROWS[key][2]}" in stage.overrides and "trainer.max_steps=40" in stage.overrides
        assert f"teacher_ckpt={teacher.done_file}" in stage.overrides
    plain, prefix = stages["continuation_plain"].overrides, stages["continuation_prefix"].overrides
    differing = {o for o in plain if o not in prefix} | {o for o in prefix if o not in plain}
    assert {o.split("=")[0] for o in differing} == {"experiment", "task_name"}


def test_a_continuation_writes_the_prefix_then_streams_like_the_rollout_functions(checkpoint):  # noqa: F811
    from sfpp.generate import load_generator

    generator = load_generator(
        checkpoint, TINY_STUDENT, teacher_ckpt=str(checkpoint), device="cpu", progress=False
    )
    clips = ground_truth(PROMPTS, 20, seed=0)
    videos, start = continue_clips(generator, PROMPTS, clips, given=1, num_frames=8, seed=5)
    assert start == 2 and videos.shape == (2, 3, 10, 16, 16)
    assert torch.allclose(videos[:, :, 0], clips[:, :, 0], atol=1e-6)
    assert torch.allclose(videos[:, :, 1], clips[:, :, 0], atol=1e-6)  # held to fill the chunk
    # the same frames by hand
    context = generator.text_encoder(PROMPTS)[0]
    cache = generator.model.new_kv_cache(2, 16, 16, window_frames=generator.cache_window_frames)
    rng = torch.Generator().manual_seed(5)
    prefix = torch.cat([clips[:, :, :1], clips[:, :, :1]], dim=2)
    list(write_prefix(generator.model, context, cache, prefix, generator.sampler, rng))
    with torch.no_grad():
        expected = rollout(generator.model, context, cache, 8, generator.latent_shape, generator.sampler, rng)
    assert torch.allclose(videos[:, :, 2:], expected.clamp(-1, 1), atol=1e-5)


def test_the_real_continuation_scores_as_real_and_a_frozen_one_does_not():
    real = ground_truth(PROMPTS * 4, 40, seed=0)
    assert fd_to_continuation(real[:, :, 8:16], real[:, :, 8:16]) == pytest.approx(0.0, abs=1e-6)
    frozen = real[:, :, 7:8].expand(-1, -1, 8, -1, -1)
    assert fd_to_continuation(frozen, real[:, :, 8:16]) > 1.0
    ratios = seam_ratios(real, real, start=8)
    assert ratios["seam_jump"] == pytest.approx(1.0) and ratios["seam_motion"] == pytest.approx(1.0)
    jumped = real.clone()
    jumped[:, :, 8:] = real[:, :, 8:].roll(4, dims=-1)  # everything moves 4 px at the seam
    assert seam_ratios(jumped, real, start=8)["seam_jump"] > 2.0


def test_evaluation_results_page_plot_and_strips(tmp_path, checkpoint):  # noqa: F811
    checkpoints = {"baseline": checkpoint, "plain": checkpoint, "prefix": checkpoint}
    import sfpp.generate

    original = sfpp.generate.load_generator

    def tiny_loader(checkpoint, overrides=(), **settings):
        return original(checkpoint, [*TINY_STUDENT, *overrides], **settings)

    sfpp.generate.load_generator = tiny_loader
    try:
        results, strips = evaluate_continuation(
            checkpoints, checkpoint, PROMPTS * 2, [0, 1], [1, 8], horizons=2
        )
    finally:
        sfpp.generate.load_generator = original
    entry = results["8"]["prefix"]
    assert set(entry["horizons"]) == {"1", "2"} and set(entry["seam"]) == {"seam_jump", "seam_motion"}
    assert len(entry["horizons"]["2"]["fd_to_continuation"]["values"]) == 2
    # one student three times: the same numbers in every row
    assert json.dumps(entry) == json.dumps(results["8"]["plain"])
    nan = sorted({m for h in entry["horizons"].values() for m, v in h.items() if v["mean"] != v["mean"]})
    assert nan in ([], ["shape_accuracy"]), nan  # a random student draws no object: no shape to score
    assert strips["1"]["prefix"].shape == (3, 2 + 16, 16, 16) and strips["8"]["prefix"].shape[1] == 8 + 16
    pictures = write_strips(strips, tmp_path, horizons=2)
    assert sorted(p.name for p in pictures.values()) == ["continuation_given1.png", "continuation_given8.png"]
    data = {
        "date": "2026-12-08",
        "commit": "0" * 40,
        "machine": "test",
        "command": "python -m sfpp.apps.continuation",
        "minutes": {"trained": {}, "evaluation": 1.0, "total": 1.0},
        "protocol": {
            "prompts": 4,
            "eval_seeds": [0, 1],
            "given_frames": [1, 8],
            "horizons": 2,
            "horizon_frames": 8,
            "student_steps": 10,
            "teacher_steps": 5,
            "training_seed": 1,
        },
        "rows": {key: label for key, (label, _, _) in ROWS.items()},
        "pictures": {given: p.name for given, p in pictures.items()} | {"plot": "continuation.png"},
        "results": results,
        "teachers": {
            "shipped": {"clean_frames": {"mean": 0.7, "spread": 0.01, "values": [0.69, 0.71]}},
            "fine-tuned": {"clean_frames": {"mean": 0.6, "spread": 0.02, "values": [0.58, 0.62]}},
        },
    }
    json.dumps(data)  # plain JSON
    assert plot_continuation(data, tmp_path / "continuation.png").exists()
    findings = continuation_findings(data)
    assert any("level at 1x-2x" in f for f in findings)  # the same student: never ahead nor behind
    page = continuation_page(data)
    assert "## Given a clip of 8 frames" in page and "(continuation_given1.png)" in page
    assert "| fine-tuned | 0.60 +- 0.02 |" in page
    # publishing copies the JSON (with the run's notes) and pictures and renders the page from them
    from sfpp.apps.continuation import publish

    (tmp_path / "results.json").write_text(json.dumps(data))
    root = tmp_path / "repo"
    (root / "docs" / "results").mkdir(parents=True)
    (root / "README.md").write_text("# a repository without a results block\n")
    publish(tmp_path, root, ["The student stages shared the CPU with test runs."])
    published = (root / "docs" / "results" / "continuation.md").read_text()
    assert "The student stages shared the CPU with test runs." in published
    assert (root / "docs" / "results" / "continuation_given8.png").exists()


def test_the_teacher_check_scores_each_teachers_own_clips(tmp_path, monkeypatch):
    import sfpp.apps.study as study
    from sfpp.apps.continuation import TEACHER_METRICS, check_teachers

    clips = {seed: ground_truth(PROMPTS, 8, seed=seed * len(PROMPTS)) for seed in (0, 1)}
    monkeypatch.setattr(study, "teacher_videos", lambda path, prompts, seeds: {s: clips[s] for s in seeds})
    checked = check_teachers({"shipped": tmp_path / "a.ckpt"}, PROMPTS, [0, 1])
    assert set(checked["shipped"]) == set(TEACHER_METRICS)
    assert checked["shipped"]["clean_frames"]["mean"] > 0.9  # real clips scored as a teacher's


def test_bad_arguments_exit_with_a_message(capsys):
    for argv, message in [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--given", "0"], "--given must be"),
        (["--prompts", "100"], "--prompts must be in 1..64"),
    ]:
        with pytest.raises(SystemExit) as error:
            main(argv)
        assert error.value.code == 2 and message in capsys.readouterr().err
