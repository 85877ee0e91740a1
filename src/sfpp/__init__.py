"""sfpp: Self-Forcing++ minute-scale autoregressive video generation as a modular library.

The package turns a short-horizon bidirectional video diffusion teacher into a streaming,
few-step, block-causal student that stays stable far past the teacher's horizon: plain
``nn.Module`` models in :mod:`sfpp.models`, parameter-free diffusion math in
:mod:`sfpp.diffusion`, training stages as LightningModules composed by Hydra configs under
``conf/`` and run with ``python -m sfpp.train``. Importing ``sfpp`` itself is cheap: it loads no
submodule, so neither torch nor Lightning is imported until a submodule is.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
