"""Per-step random draws: the same after a resume, and the same split over micro-batches or ranks."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sfpp.diffusion.training import TrainingSigmas
from sfpp.stages.draws import GlobalBatchDraws, step_generator
from sfpp.world import WorldDataModule
from test_ode_init import _make_pairs
from test_ode_init import _module as _ode_init_module
from test_teacher import _teacher


def test_micro_batches_and_ranks_keep_their_rows_of_the_global_draws():
    whole = GlobalBatchDraws(step_generator(0, 3, 7), 8)
    expected = [whole.rand(), whole.randn(2, 3), whole.randint(0, 5, 4), whole.sigmas(TrainingSigmas())]
    # 2 ranks x 2 micro-batches of 2: rank r, micro-batch m holds rows (2m + i) * 2 + r
    for rank in range(2):
        for micro in range(2):
            rows = slice(micro * 4 + rank, (micro + 1) * 4, 2)
            part = GlobalBatchDraws(step_generator(0, 3, 7), 2, rows, 8)
            got = [part.rand(), part.randn(2, 3), part.randint(0, 5, 4), part.sigmas(TrainingSigmas())]
            for full, mine in zip(expected, got, strict=True):
                assert torch.equal(full[rows], mine)
    assert not torch.equal(GlobalBatchDraws(step_generator(0, 3, 8), 8).rand(), expected[0])


def _fit(module, data, tmp_path, max_steps, ckpt_path=None, every=None):
    callbacks = (
        [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1)]
        if every
        else []
    )
    L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(every),
        callbacks=callbacks,
        default_root_dir=tmp_path,
    ).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def _same_state(a, b):
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    optimizers = a.optimizers().optimizer, b.optimizers().optimizer
    for state_a, state_b in zip(optimizers[0].state.values(), optimizers[1].state.values(), strict=True):
        for name in state_a:
            assert torch.equal(state_a[name], state_b[name]), name


def test_an_interrupted_teacher_resumes_bit_identically(tmp_path):
    """seed_everything reseeds the global generator on every start: the stage must not draw from it."""

    def data():
        return WorldDataModule(num_frames=4, batch_size=2, seed=0, val_size=2)

    L.seed_everything(0)
    straight = _fit(
        _teacher(clean_prefix_probability=0.5, clean_prefix_max_frames=2), data(), tmp_path / "a", 4
    )
    L.seed_everything(0)
    _fit(
        _teacher(clean_prefix_probability=0.5, clean_prefix_max_frames=2), data(), tmp_path / "b", 2, every=2
    )
    L.seed_everything(0)
    (checkpoint,) = (tmp_path / "b" / "ckpt").glob("*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2  # plain hyperparameters
    resumed = _fit(
        _teacher(clean_prefix_probability=0.5, clean_prefix_max_frames=2),
        data(),
        tmp_path / "c",
        4,
        checkpoint,
    )
    _same_state(straight, resumed)


def test_an_interrupted_ode_init_resumes_bit_identically(tmp_path):
    from sfpp.data import OdePairsDataModule

    pairs = _make_pairs(tmp_path / "pairs")

    def run(directory, steps, **kw):
        L.seed_everything(0)
        torch.manual_seed(0)
        return _fit(
            _ode_init_module(), OdePairsDataModule(pairs, batch_size=2, seed=0), directory, steps, **kw
        )

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2, every=2)
    (checkpoint,) = (tmp_path / "b" / "ckpt").glob("*.ckpt")
    loaded = torch.load(checkpoint, weights_only=True)  # the data module's path is kept as a string
    assert loaded["datamodule_hyper_parameters"]["path"] == str(pairs)
    resumed = run(tmp_path / "c", 4, ckpt_path=checkpoint)
    _same_state(straight, resumed)


def test_shuffled_passes_are_permutations_that_depend_only_on_the_index():
    from sfpp.data.resumable import ShuffledPasses

    passes = ShuffledPasses(list(range(10)), batch_size=4, seed=3, passes=5)
    assert len(passes) == 8 * 5  # 2 whole batches of 4 per pass
    items = [passes[k] for k in range(len(passes))]
    for p in range(5):
        one = items[p * 8 : (p + 1) * 8]
        assert len(set(one)) == 8 and set(one) <= set(range(10))
    assert items[:8] != items[8:16]
    again = ShuffledPasses(list(range(10)), batch_size=4, seed=3, passes=5)
    assert [again[k] for k in (17, 3, 39, 0)] == [items[k] for k in (17, 3, 39, 0)]


@pytest.mark.parametrize("fused", [False, True])
def test_a_primed_optimiser_steps_exactly_as_a_fresh_one(fused):
    from sfpp.stages.checkpoints import prime_optimizer_state

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    fresh = torch.optim.AdamW(weights, lr=1e-2, weight_decay=0.1, fused=fused)
    primed = torch.optim.AdamW(copies, lr=1e-2, weight_decay=0.1, fused=fused)
    prime_optimizer_state(primed)
    assert len(primed.state) == 2 and all(float(s["step"]) == 0 for s in primed.state.values())
    assert all(torch.equal(a, b) for a, b in zip(weights, copies, strict=True))  # untouched
    for _ in range(3):
        for a, b in zip(weights, copies, strict=True):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad, grad.clone()
        fresh.step()
        primed.step()
    for a, b in zip(weights, copies, strict=True):
        assert torch.equal(a, b)
    plain = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    prime_optimizer_state(plain)  # no state per parameter: nothing to prime
    assert not plain.state
