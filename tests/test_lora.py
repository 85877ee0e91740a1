"""LoRA on generator and critic: only adapters train, the EMA averages them, checkpoints load as
plain merged models, adapter files round-trip."""

from __future__ import annotations

import lightning as L
import pytest
import torch

pytest.importorskip("peft")

from sfpp.models.lora import (  # noqa: E402
    LoraSettings,
    apply_lora,
    count_parameters,
    load_adapter,
    lora_state_dict,
    save_adapter,
)
from sfpp.stages.checkpoints import load_submodule  # noqa: E402
from test_dmd import _data, _module, _tiny, _trainer  # noqa: E402

SETTINGS = LoraSettings(rank=4, alpha=8.0)


def _inputs(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 16, 16, generator=generator)
    t = torch.full((2, 4), 500.0)
    context = torch.randn(2, 8, model.config.text_dim, generator=generator)
    return x, t, context


def test_adapters_start_as_the_base_model_and_only_they_train():
    torch.manual_seed(0)
    model = _tiny(True)
    x, t, context = _inputs(model)
    with torch.no_grad():
        before = model(x, t, context)
    apply_lora(model, SETTINGS)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context), before)  # B = 0 at the start
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 4
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert any("self_attn.q" in n for n in names) and any("cross_attn.v" in n for n in names)
    assert any("ffn.0" in n for n in names) and any("ffn.2" in n for n in names)
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="match no module"):
        apply_lora(_tiny(True), LoraSettings(target_modules=("nothing_like_this",)))


def test_dmd_with_lora_trains_the_adapters_and_loads_as_a_merged_plain_model(tmp_path):
    module = _module(ratio=1, lora={"rank": 4, "alpha": 8.0})
    base = {n: p.detach().clone() for n, p in module.generator.named_parameters() if not p.requires_grad}
    trainer = _trainer(tmp_path, 4, enable_checkpointing=False)
    trainer.fit(module, datamodule=_data())
    generator_opt, critic_opt = module.optimizers()
    for optimizer, network in ((generator_opt, module.generator), (critic_opt, module.critic.model)):
        trained = {id(p) for p in network.parameters() if p.requires_grad}
        states = optimizer.optimizer.state
        assert states and all(id(p) in trained for p in states)  # optimiser states for adapters only
        assert {id(p) for group in optimizer.optimizer.param_groups for p in group["params"]} == trained
    for name, parameter in module.generator.named_parameters():
        if name in base:
            assert torch.equal(parameter, base[name]), name  # the base weights never move
    assert any(v.abs().sum() > 0 for k, v in lora_state_dict(module.generator).items() if "lora_B" in k)
    # the EMA copy followed the adapters and nothing else
    ema_state, online_state = module.ema.module.state_dict(), module.generator.state_dict()
    assert all(torch.equal(ema_state[k], online_state[k]) for k in base if k in ema_state)
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["hyper_parameters"]["lora"]["rank"] == 4
    plain = load_submodule(_tiny(True), path, "ema.module.")
    x, t, context = _inputs(plain)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(x, t, context), module.ema.module(x, t, context), rtol=1e-4, atol=1e-5
        )
    assert not any(".lora_" in k for k in plain.state_dict())


def test_adapter_files_round_trip(tmp_path):
    torch.manual_seed(0)
    model = apply_lora(_tiny(True), SETTINGS)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    path = save_adapter(model, tmp_path / "generator.safetensors", SETTINGS)
    torch.manual_seed(0)
    fresh, settings = load_adapter(_tiny(True), path)
    assert settings == SETTINGS
    x, t, context = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, context), model(x, t, context))
    with pytest.raises(FileNotFoundError):
        load_adapter(_tiny(True), tmp_path / "missing.safetensors")
    L.seed_everything(0)
