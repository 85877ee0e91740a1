"""Applications built on the library: the demo, the study, the stage pipeline runner and long-video evaluation.

Nothing in the library imports this package. Each application is a module with a ``main`` and a
console entry point (``sfpp-demo``, ``sfpp-study``); they share the world's constants through
:mod:`sfpp.world` and the toy pipeline through :mod:`sfpp.apps.pipeline`.
"""
