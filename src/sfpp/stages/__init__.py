"""The training stages, as LightningModules sharing the library's components.

* :mod:`sfpp.stages.teacher`: the bidirectional teacher of the built-in world (flow matching);
* :mod:`sfpp.stages.ode_init`: stage 1, the causal few-step student regressed on teacher ODE pairs;
* :mod:`sfpp.stages.dmd`: stage 2, extended DMD (Self-Forcing when the rollout is one window);
* :mod:`sfpp.stages.grpo`: stage 3, GRPO with a video reward.

The modules are imported on demand (``sfpp.stages.dmd.DMDModule``), so importing this package
loads none of them.
"""
