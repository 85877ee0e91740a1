"""Word swaps of world prompts, the denoiser word-use check, and python -m sfpp.teacher_report."""

import json

import pytest
import torch

from sfpp.data.world import all_prompts, parse_prompt
from sfpp.demo import ground_truth
from sfpp.metrics import WorldObjectScore, denoiser_word_use, swap_attribute
from sfpp.models import build_model
from sfpp.teacher_report import main as teacher_report_main
from sfpp.text.world import WorldTextEncoder


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
    assert set(report["word_use"][0.4]) == {"true", "colour", "shape"}
    written = json.loads((tmp_path / "r" / "report.json").read_text())
    assert written["real"] == report["real"] and set(written["word_use"]) == {"0.4", "0.6"}
    with pytest.raises(FileNotFoundError, match="toy_teacher"):
        teacher_report_main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "r")])
    with pytest.raises(ValueError, match="num_prompts"):
        teacher_report_main(["--checkpoint", str(checkpoint), "--prompts", "0"])
