"""Word swaps of world prompts, the denoiser word-use check, and python -m sfpp.world.report."""

import json

import pytest
import torch

from sfpp.models import build_model
from sfpp.world import (
    WorldObjectScore,
    WorldTextEncoder,
    all_prompts,
    ground_truth,
    parse_prompt,
    render,
    spec_from_prompt,
)
from sfpp.world.report import main as teacher_report_main
from sfpp.world.word_swap import (
    denoiser_word_choice,
    denoiser_word_use,
    first_object_variants,
    swap_attribute,
)


@pytest.mark.parametrize("attribute", ["colour", "shape", "background"])
def test_swap_changes_only_its_kind_of_word_and_permutes_the_prompts(attribute):
    prompts = all_prompts()
    swapped = [swap_attribute(p, attribute) for p in prompts]
    assert sorted(swapped) == sorted(prompts)  # a permutation of the valid prompts
    for before, after in zip(prompts, swapped, strict=True):
        a, b = parse_prompt(before), parse_prompt(after)
        assert len(a.objects) == len(b.objects)
        colours_kept = [x[0] == y[0] for x, y in zip(a.objects, b.objects, strict=True)]
        shapes_kept = [x[1] == y[1] for x, y in zip(a.objects, b.objects, strict=True)]
        assert (not any(colours_kept)) if attribute == "colour" else all(colours_kept)
        assert (not any(shapes_kept)) if attribute == "shape" else all(shapes_kept)
        assert (a.background == b.background) == (attribute != "background")
    assert swap_attribute("a red circle bouncing on a dark background", "colour") == (
        "a green circle bouncing on a dark background"
    )
    with pytest.raises(ValueError, match="attribute must be one of"):
        swap_attribute(prompts[0], "size")


def test_word_use_separates_a_model_that_reads_shapes_from_one_that_does_not():
    prompts = [p for p in all_prompts() if " and " not in p][:12]
    clips = ground_truth(prompts, 6, seed=3)
    metric = WorldObjectScore()

    def reads_every_word(x_t, sigma, variant):  # renders exactly what the prompt says, same scenes
        return ground_truth(variant, 6, seed=3)

    def ignores_words(x_t, sigma, variant):  # a perfect denoiser that never looks at the text
        return clips

    reads = denoiser_word_use(reads_every_word, clips, prompts, [0.5], metric, ("colour", "shape"))[0.5]
    assert reads["true"]["shape_accuracy"] == 1.0 and reads["shape"]["shape_accuracy"] == 0.0
    assert reads["true"]["detected_fraction"] == 1.0 and reads["colour"]["detected_fraction"] == 0.0
    ignores = denoiser_word_use(ignores_words, clips, prompts, [0.3, 0.6], metric, ("colour", "shape"))
    for by_variant in ignores.values():
        assert by_variant["true"] == by_variant["shape"] == by_variant["colour"]
    with pytest.raises(ValueError, match="noise levels"):
        denoiser_word_use(ignores_words, clips, prompts, [1.0], metric)
    with pytest.raises(ValueError, match="one prompt per clip"):
        denoiser_word_use(ignores_words, clips, prompts[:3], [0.5], metric)


def test_teacher_report_on_a_stand_in_checkpoint(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "teacher.ckpt"
    state = {f"text_encoder.{k}": v for k, v in WorldTextEncoder(embed_dim=64).state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in build_model("toy", prediction_type="x0").state_dict().items()}
    torch.save({"state_dict": state}, checkpoint)
    report = teacher_report_main(
        ["--checkpoint", str(checkpoint), "--prompts", "4", "--out", str(tmp_path / "r")]
    )
    assert report["real"]["clean_frame_fraction"] == 1.0 and report["real"]["shape_accuracy"] == 1.0
    assert report["teacher"]["clean_frame_fraction"] < 0.5  # an untrained teacher draws no clean frames
    assert 0.0 < report["real"]["grid_aligned_fraction"] < 0.5  # real objects sit anywhere
    confusion = report["shape_confusion"]
    assert set(confusion) == {"circle", "square", "triangle"}
    classified = sum(sum(row.values()) for row in confusion.values())
    assert classified == 0 or report["teacher"]["shape_accuracy"] == pytest.approx(
        sum(confusion[shape][shape] for shape in confusion) / classified
    )
    assert set(report["word_use"]) == {0.4, 0.6}
    assert set(report["word_choice"]) == {"colour", "shape"}
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in report["word_choice"].values())
    assert set(report["word_use"][0.4]) == {"true", "colour", "shape"}
    gap = report["ideal_gap"]
    assert set(gap) == {0.2, 0.4, 0.6, 0.8} and gap[0.2]["ideal"] < 1e-6
    assert all(v["model"] > v["ideal"] for v in gap.values())  # an untrained teacher is far from ideal
    handover, ideal = report["shape_handover"]["teacher"], report["shape_handover"]["ideal"]
    assert set(handover) == set(ideal) == {0.0, 0.3, 0.5, 0.7, 0.9}
    # An untrained teacher draws no clean object; the ideal finishing from sigma 0.3 draws clean ones.
    assert handover[0.0]["clean_frame_fraction"] < 0.5
    assert handover[0.3]["clean_frame_fraction"] > handover[0.0]["clean_frame_fraction"]
    # The reference: the ideal itself draws every prompted shape, and has decided it by sigma 0.3.
    assert ideal[0.0]["shape_accuracy"] == ideal[0.3]["shape_accuracy"] == 1.0
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert written["real"] == report["real"] and set(written["word_use"]) == {"0.4", "0.6"}
    with pytest.raises(FileNotFoundError, match="toy_teacher"):
        teacher_report_main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "r")])
    with pytest.raises(ValueError, match="num_prompts"):
        teacher_report_main(["--checkpoint", str(checkpoint), "--prompts", "0"])


def test_first_object_variants_are_valid_prompts_that_differ_in_one_word():
    prompt = "a red circle and a blue square bouncing on a dark background"
    colours, true_colour = first_object_variants(prompt, "colour")
    assert len(colours) == 5 and colours[true_colour] == prompt  # blue is taken by the other object
    assert all(parse_prompt(v).objects[1] == ("blue", "square") for v in colours)
    assert len({parse_prompt(v).objects[0][0] for v in colours}) == 5
    shapes, true_shape = first_object_variants(prompt, "shape")
    assert [parse_prompt(v).objects[0][1] for v in shapes] == ["circle", "square", "triangle"]
    assert true_shape == 0
    with pytest.raises(ValueError, match="'colour' or 'shape'"):
        first_object_variants(prompt, "background")


def _render(prompts, num_frames=4):
    """Clips of the prompts, all from scene seed 7: a changed word changes nothing else."""
    return torch.stack([torch.from_numpy(render(spec_from_prompt(p, 7), num_frames)) for p in prompts])


def test_word_choice_separates_a_model_that_reads_shapes_from_one_that_does_not():
    prompts = [p for p in all_prompts() if " and " not in p][:9]
    prompts.append("a red circle and a blue square bouncing on a dark background")
    clips = _render(prompts)

    def reads_every_word(x_t, sigma, variant):  # renders exactly what the prompt says
        return _render(variant)

    def reads_colours_only(x_t, sigma, variant):  # the prompted colours, but always circles
        return _render([p.replace("square", "circle").replace("triangle", "circle") for p in variant])

    def ignores_words(x_t, sigma, variant):
        return x_t * 0.5

    for attribute in ("colour", "shape"):
        reads = denoiser_word_choice(reads_every_word, clips, prompts, [0.5], attribute)
        assert reads["accuracy"] == 1.0 and reads["error_gap"] < -0.5
        ignores = denoiser_word_choice(ignores_words, clips, prompts, [0.3, 0.7], attribute, num_draws=1)
        assert ignores["accuracy"] == 0.0 and ignores["error_gap"] == pytest.approx(0.0, abs=1e-6)  # ties
    assert denoiser_word_choice(reads_colours_only, clips, prompts, [0.5], "colour")["accuracy"] == 1.0
    shapes = denoiser_word_choice(reads_colours_only, clips, prompts, [0.5], "shape")
    assert shapes["accuracy"] == 0.0 and shapes["error_gap"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="noise levels"):
        denoiser_word_choice(ignores_words, clips, prompts, [1.0], "shape")
    with pytest.raises(ValueError, match="num_draws"):
        denoiser_word_choice(ignores_words, clips, prompts, [0.5], "shape", num_draws=0)
    with pytest.raises(ValueError, match="one prompt per clip"):
        denoiser_word_choice(ignores_words, clips, prompts[:3], [0.5], "shape")
