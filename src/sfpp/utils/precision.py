"""``${sfpp_precision:bf16-mixed,${trainer.accelerator}}``: bf16 where the hardware computes it natively.

CPU autocast to bf16 pays on CPUs with native bf16 products (AVX512-BF16 or AMX) and costs a
hundredfold on the others, which emulate them (a ``(1024, 256) @ (256, 256)`` product: 0.8 ms in
float32, 96 ms in bf16 on an AVX2-only AMD EPYC). A config asks for the precision it prefers
through the ``sfpp_precision`` resolver and gets ``32-true`` where that precision would emulate
bf16. :func:`sfpp.utils.resolvers.register_resolvers` registers it with the configs' other resolvers
(``python -m sfpp.train`` and ``python -m sfpp.plan`` call it before composing a config).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["RESOLVER", "bf16_is_native", "fast_precision"]

log = logging.getLogger(__name__)

#: The resolver's name in configs.
RESOLVER = "sfpp_precision"


def bf16_is_native(accelerator: str = "auto") -> bool:
    """Whether the device that ``accelerator`` picks computes bf16 products natively.

    Args:
        accelerator: Lightning's ``trainer.accelerator`` (``auto``, ``cpu``, ``gpu``, ``cuda``).
    """
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def fast_precision(preferred: str, accelerator: str = "auto") -> str:
    """``preferred`` when it computes in bf16 natively on the device, else ``32-true``.

    Args:
        preferred: A Lightning precision (``bf16-mixed``, ``bf16-true``, ``32-true``, ...).
        accelerator: Lightning's ``trainer.accelerator``.
    """
    if not str(preferred).startswith("bf16") or bf16_is_native(str(accelerator)):
        return str(preferred)
    log.info("no native bf16 on this %s: training in 32-true instead of %s", accelerator, preferred)
    return "32-true"
