"""Students released by Self-Forcing, CausVid and LongLive load as ``student_ckpt`` / ``critic_ckpt``."""

from __future__ import annotations

import hydra
import peft
import pytest
import torch

from sfpp.models import build_model
from sfpp.models.wan import WanWeightsError, merge_lora_adapters, read_released_state
from sfpp.stages.checkpoints import load_submodule
from test_dmd_experiments import tiny_parts_overrides, tiny_wan_dir  # noqa: F401  (fixture)


def _student(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("tiny", causal=True, num_frames_per_chunk=3, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # distinct from a fresh model of the same seed
    return model


def _wrapped(model: torch.nn.Module, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """Keys as the reference codes save them: behind their wrapper's ``model.`` attribute."""
    return {prefix + k: v.clone() for k, v in model.state_dict().items()}


def _equal(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    return all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )


def test_self_forcing_layout_prefers_the_ema_and_reads_the_critic(tmp_path):
    generator, ema, critic = _student(1), _student(2), build_model("tiny")
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {"generator": _wrapped(generator), "generator_ema": _wrapped(ema), "critic": _wrapped(critic)}, path
    )
    loaded = load_submodule(
        build_model("tiny", causal=True, num_frames_per_chunk=3), path, prefix="generator."
    )
    assert _equal(loaded, ema)
    plain = load_submodule(
        build_model("tiny", causal=True, num_frames_per_chunk=3), path, "generator.", entry="generator"
    )
    assert _equal(plain, generator)
    assert _equal(load_submodule(build_model("tiny"), path, prefix="critic.model."), critic)


def test_causvid_layout_and_fsdp_wrapped_keys(tmp_path):
    generator = _student(3)
    path = tmp_path / "model.pt"
    state = {
        k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module."): v for k, v in _wrapped(generator).items()
    }
    torch.save({"generator": state}, path)
    assert _equal(
        load_submodule(build_model("tiny", causal=True, num_frames_per_chunk=3), path, "generator."),
        generator,
    )


def _peft_adapted(base: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The base wrapped by peft as LongLive does (every block linear), adapters drawn at random."""
    targets = sorted(
        name
        for name, module in base.named_modules()
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear)
    )
    adapted = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return adapted


@pytest.mark.parametrize("nested", [True, False])
def test_longlive_lora_adapters_merge_as_peft_merges_them(tmp_path, nested):
    base = _student(4)
    base_path = tmp_path / "longlive_base.pt"
    torch.save({"generator": _wrapped(base)}, base_path)
    adapted = _peft_adapted(_student(4), seed=9)
    adapters = peft.get_peft_model_state_dict(adapted)  # base_model.model.blocks.N....lora_A.weight
    assert adapters and all(k.startswith("base_model.model.") for k in adapters)
    lora_path = tmp_path / "lora.pt"
    torch.save({"generator_lora": adapters} if nested else adapters, lora_path)
    expected = adapted.merge_and_unload()
    loaded = load_submodule(
        build_model("tiny", causal=True, num_frames_per_chunk=3),
        base_path,
        "generator.",
        lora=lora_path,
        lora_alpha=8,
    )
    for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert not _equal(loaded, base)


def test_a_file_without_the_network_names_what_it_holds(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"optimizer_states": {"w": torch.zeros(1)}, "ema_weights": _wrapped(_student(5))}, path)
    with pytest.raises(WanWeightsError, match=r"no student weights.*\['ema_weights', 'optimizer_states'\]"):
        load_submodule(build_model("tiny", causal=True, num_frames_per_chunk=3), path, "generator.")
    with pytest.raises(WanWeightsError, match="entry 'generator'"):
        read_released_state(path, entry="generator")
    # the entry setting reads it
    state, chosen = read_released_state(path, entry="ema_weights")
    assert chosen == "ema_weights" and "blocks.0.self_attn.q.weight" in state
    lightning = tmp_path / "stage.ckpt"
    torch.save({"state_dict": {}}, lightning)
    with pytest.raises(ValueError, match="released checkpoints only"):
        load_submodule(build_model("tiny"), lightning, "generator.", entry="generator")


def test_adapters_that_do_not_fit_are_refused():
    state = build_model("tiny").state_dict()
    with pytest.raises(WanWeightsError, match="does not have"):
        merge_lora_adapters(
            state,
            {
                "blocks.9.ffn.0.lora_A.weight": torch.zeros(2, 32),
                "blocks.9.ffn.0.lora_B.weight": torch.zeros(64, 2),
            },
        )
    with pytest.raises(WanWeightsError, match="only lora_A"):
        merge_lora_adapters(state, {"blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 32)})
    with pytest.raises(WanWeightsError, match="does not fit"):
        merge_lora_adapters(
            state,
            {
                "blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 7),
                "blocks.0.ffn.0.lora_B.weight": torch.zeros(64, 2),
            },
        )
    with pytest.raises(WanWeightsError, match="not LoRA matrices"):
        merge_lora_adapters(state, {"blocks.0.ffn.0.weight": torch.zeros(64, 32)})


def test_the_paper_experiment_starts_from_a_released_student_and_critic(
    compose_train,
    tiny_wan_dir,  # noqa: F811  (the fixture imported above)
    tmp_path,
):
    root, z = tiny_wan_dir
    shape = {"in_channels": z, "out_channels": z, "text_dim": 32}
    ema = _student(6, **shape)
    torch.manual_seed(7)
    critic = build_model("tiny", **shape)
    released = tmp_path / "self_forcing_dmd.pt"
    torch.save(
        {
            "generator": _wrapped(_student(8, **shape)),
            "generator_ema": _wrapped(ema),
            "critic": _wrapped(critic),
        },
        released,
    )
    cfg = compose_train(
        [
            "experiment=self_forcing_1_3b",
            f"student_ckpt={released}",
            f"critic_ckpt={released}",
            *tiny_parts_overrides(root, z),
        ]
    )
    module = hydra.utils.instantiate(cfg.stage)
    assert _equal(module.generator, ema)
    assert _equal(module.critic.model, critic)
    assert not _equal(module.critic.model, module.teacher)
