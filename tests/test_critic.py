"""Tests for sfpp.models.critic: ScoreCritic starts as the teacher and trains independently of it."""

from __future__ import annotations

import pytest
import torch

from sfpp.models import build_model
from sfpp.models.critic import ScoreCritic


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", causal=False, attention_backend="sdpa").eval().requires_grad_(False)


def _inputs():
    x_t = torch.randn(2, 4, 3, 4, 4, generator=_gen(0))
    timestep = torch.tensor([250.0, 900.0])
    context = torch.randn(2, 5, 16, generator=_gen(1))
    return x_t, timestep, context


def test_from_teacher_starts_identical_trainable_and_in_train_mode():
    teacher = _teacher()
    critic = ScoreCritic.from_teacher(teacher)
    assert critic.training and critic.model.training
    assert all(p.requires_grad for p in critic.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is untouched
    assert not teacher.training
    x_t, timestep, context = _inputs()
    with torch.no_grad():
        assert torch.equal(critic(x_t, timestep, context), teacher(x_t, timestep, context))


def test_updating_the_critic_leaves_the_teacher_alone():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    critic = ScoreCritic.from_teacher(teacher)
    assert all(
        p.data_ptr() != q.data_ptr()
        for p, q in zip(critic.model.parameters(), teacher.parameters(), strict=True)
    )
    x_t, timestep, context = _inputs()
    optimizer = torch.optim.SGD(critic.parameters(), lr=0.1)
    critic(x_t, timestep, context).square().mean().backward()
    optimizer.step()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    with torch.no_grad():
        assert not torch.allclose(critic(x_t, timestep, context), teacher(x_t, timestep, context))


def test_rejects_a_causal_model():
    torch.manual_seed(0)
    student = build_model("tiny", causal=True, num_frames_per_chunk=1, attention_backend="sdpa")
    with pytest.raises(ValueError, match="causal=False"):
        ScoreCritic(student)
    with pytest.raises(ValueError, match="bidirectional"):
        ScoreCritic.from_teacher(student)
    with pytest.raises(TypeError, match="nn.Module"):
        ScoreCritic("teacher")  # type: ignore[arg-type]


def test_wraps_a_model_as_is():
    teacher = _teacher()
    critic = ScoreCritic(teacher)
    assert critic.model is teacher
    assert set(critic.state_dict()) == {f"model.{k}" for k in teacher.state_dict()}
