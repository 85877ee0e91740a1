"""``sfpp_precision``: bf16 only where the device computes it natively."""

from __future__ import annotations

import torch

from sfpp.utils import precision
from sfpp.utils.precision import bf16_is_native, fast_precision


def test_bf16_is_kept_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(precision, "bf16_is_native", lambda accelerator="auto": False)
    assert fast_precision("bf16-mixed", "cpu") == "32-true"
    assert fast_precision("bf16-true", "cpu") == "32-true"
    assert fast_precision("32-true", "cpu") == "32-true"
    assert fast_precision("16-mixed", "cpu") == "16-mixed"  # not bf16: passed through
    monkeypatch.setattr(precision, "bf16_is_native", lambda accelerator="auto": True)
    assert fast_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_the_cpu_check_reads_the_cpu_features(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not bf16_is_native("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert bf16_is_native("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_is_native("gpu")  # asked for a GPU that is not there


def test_the_toy_teacher_config_resolves_to_this_machines_precision(compose_train):
    cfg = compose_train(["experiment=toy_teacher"], shrink=False)
    expected = "bf16-mixed" if bf16_is_native(cfg.trainer.accelerator) else "32-true"
    assert cfg.trainer.precision == expected
