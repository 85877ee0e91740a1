import pytest
import torch
from torch import nn

from sfpp.stages.checkpoints import checkpoint_prefixes, load_submodule


def _save(tmp_path, state):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def test_load_submodule_by_prefix(tmp_path):
    torch.manual_seed(0)
    source = nn.Linear(3, 2)
    path = _save(
        tmp_path, {f"ema.module.{k}": v for k, v in source.state_dict().items()} | {"other.w": torch.ones(1)}
    )
    target = load_submodule(nn.Linear(3, 2), path, "ema.module.")
    assert torch.equal(target.weight, source.weight)
    assert checkpoint_prefixes(path) == ["ema.", "other."]


def test_clear_errors(tmp_path):
    path = _save(tmp_path, {"model.weight": torch.ones(2, 3), "model.bias": torch.ones(2)})
    with pytest.raises(ValueError, match=r"no weights under prefix 'ema.module.'.*\['model.'\]"):
        load_submodule(nn.Linear(3, 2), path, "ema.module.")
    with pytest.raises(ValueError, match="do not fit Linear"):
        load_submodule(nn.Linear(4, 2), path, "model.")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_submodule(nn.Linear(3, 2), tmp_path / "missing.ckpt", "model.")
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        load_submodule(nn.Linear(3, 2), tmp_path / "plain.pt", "model.")


def test_a_student_must_share_the_teachers_text_encoder(tmp_path):
    torch.manual_seed(0)
    student, encoder, other_encoder = nn.Linear(3, 2), nn.Linear(4, 4), nn.Linear(4, 4)

    def save(name, generator, text):
        state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
        if text is not None:
            state |= {f"text_encoder.{k}": v for k, v in text.state_dict().items()}
        torch.save({"state_dict": state}, tmp_path / name)
        return tmp_path / name

    student_ckpt = save("student.ckpt", student, encoder)
    same_teacher = save("teacher.ckpt", nn.Linear(3, 2), encoder)
    loaded = load_submodule(nn.Linear(3, 2), student_ckpt, "generator.", shared_with=same_teacher)
    assert torch.equal(loaded.weight, student.weight)
    retrained = save("retrained.ckpt", nn.Linear(3, 2), other_encoder)
    with pytest.raises(ValueError, match=r"'text_encoder.' weights of .*student.ckpt differ .*retrained"):
        load_submodule(nn.Linear(3, 2), student_ckpt, "generator.", shared_with=retrained)
    # A checkpoint without the shared weights (a frozen encoder that is not saved) is not compared.
    bare_student = save("bare.ckpt", student, None)
    load_submodule(nn.Linear(3, 2), bare_student, "generator.", shared_with=retrained)
    with pytest.raises(FileNotFoundError):
        load_submodule(nn.Linear(3, 2), student_ckpt, "generator.", shared_with=tmp_path / "missing.ckpt")
