"""The DMD experiments run end to end (fast_dev_run) on tiny models from tiny checkpoints."""

import pytest
import torch

from factories import tiny_model
from sfpp.models import build_model
from sfpp.train import train
from sfpp.world import WorldTextEncoder


@pytest.fixture
def tiny_checkpoints(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_model()
    text = WorldTextEncoder(embed_dim=16)
    student = tiny_model(causal=True)
    teacher_ckpt, student_ckpt = tmp_path / "teacher.ckpt", tmp_path / "student.ckpt"
    state = {f"ema.module.{k}": v for k, v in teacher.state_dict().items()}
    state |= {f"text_encoder.{k}": v for k, v in text.state_dict().items()}
    torch.save({"state_dict": state}, teacher_ckpt)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in student.state_dict().items()}}, student_ckpt)
    return teacher_ckpt, student_ckpt


# The toy DMD experiments with tiny models (3 channels, 4x4 patches) for the generator and the teacher.
TINY_TOY_DMD = [
    "model=tiny",
    "++model.in_channels=3",
    "++model.out_channels=3",
    "++model.patch_size=[1,4,4]",
    "stage.teacher.module.flavour=tiny",
    "++stage.teacher.module.in_channels=3",
    "++stage.teacher.module.out_channels=3",
    "++stage.teacher.module.patch_size=[1,4,4]",
    "text.module.embed_dim=16",
]


@pytest.mark.parametrize("experiment", ["toy_self_forcing", "toy_extend"])
def test_toy_dmd_experiments_run(compose_train, tiny_checkpoints, experiment):
    teacher_ckpt, student_ckpt = tiny_checkpoints
    cfg = compose_train(
        [
            f"experiment={experiment}",
            *TINY_TOY_DMD,
            f"teacher_ckpt={teacher_ckpt}",
            f"student_ckpt={student_ckpt}",
            "data.batch_size=2",
            "data.val_size=2",
            "stage.critic_warmup_steps=0",
            "stage.student.val_rollout_frames=8",
            "callbacks.video_samples.num_frames=4",
            "debug=fast_dev_run",
        ]
    )
    train(cfg)


def test_a_toy_dmd_run_resumes_from_its_checkpoint(compose_train, tiny_checkpoints, tmp_path):
    """Its hyperparameters hold OmegaConf lists (latent_shape): resuming must still load them."""
    teacher_ckpt, student_ckpt = tiny_checkpoints
    overrides = [
        "experiment=toy_self_forcing",
        *TINY_TOY_DMD,
        f"teacher_ckpt={teacher_ckpt}",
        f"student_ckpt={student_ckpt}",
        "data.batch_size=2",
        "stage.critic_warmup_steps=0",
        "~callbacks.video_samples",
        "trainer.limit_val_batches=0",
        "logger=csv",
        f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpt",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    train(compose_train([*overrides, "trainer.max_steps=2"], shrink=False))
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    train(compose_train([*overrides, "trainer.max_steps=3", f"ckpt_path={last}"], shrink=False))
    assert torch.load(last, weights_only=True)["global_step"] == 3  # plain hyperparameters


@pytest.mark.parametrize("experiment", ["self_forcing_1_3b", "extend_100s"])
def test_paper_dmd_experiments_need_local_weights(compose_train, experiment):
    cfg = compose_train([f"experiment={experiment}"], shrink=False)
    with pytest.raises(Exception, match="wan_dir|student_ckpt|data.path"):  # a clear error, no download
        train(cfg)


def tiny_parts_overrides(root, z) -> list[str]:
    """Overrides that point a paper-scale experiment at the tiny parts of :func:`tiny_wan_dir`."""
    return [
        f"wan_dir={root}",
        "model=tiny",
        f"++model.in_channels={z}",
        f"++model.out_channels={z}",
        "++model.text_dim=32",
        f"stage.student.latent_shape=[{z},8,8]",
        "codec.dtype=float32",
        "text.dtype=float32",
    ]


@pytest.fixture(scope="module")
def tiny_wan_dir(tmp_path_factory):
    """A diffusers-style Wan directory with tiny random parts: transformer/, vae/, text_encoder/, tokenizer/."""
    from diffusers import AutoencoderKLWan

    from sfpp.models.wan import save_wan_weights
    from test_codecs import TINY_VAE_CONFIG
    from test_umt5 import build_model as build_umt5
    from test_umt5 import build_tokenizer

    root = tmp_path_factory.mktemp("wan")
    torch.manual_seed(0)
    AutoencoderKLWan(**TINY_VAE_CONFIG).save_pretrained(root / "vae")
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    build_umt5(len(tokenizer)).save_pretrained(root / "text_encoder")
    z = TINY_VAE_CONFIG["z_dim"]
    save_wan_weights(build_model("tiny", in_channels=z, out_channels=z, text_dim=32), root / "transformer")
    student = build_model(
        "tiny", causal=True, num_frames_per_chunk=3, in_channels=z, out_channels=z, text_dim=32
    )
    torch.save(
        {"state_dict": {f"generator.{k}": v for k, v in student.state_dict().items()}}, root / "student.ckpt"
    )
    return root, z


@pytest.mark.parametrize(("experiment", "rollout_frames"), [("self_forcing_1_3b", 21), ("extend_100s", 399)])
def test_paper_dmd_experiments_instantiate_with_tiny_parts(
    compose_train, tiny_wan_dir, experiment, rollout_frames
):
    import hydra

    from sfpp.stages.dmd import DMDModule

    root, z = tiny_wan_dir
    cfg = compose_train(
        [f"experiment={experiment}", f"student_ckpt={root / 'student.ckpt'}", *tiny_parts_overrides(root, z)]
    )
    module = hydra.utils.instantiate(cfg.stage)
    assert isinstance(module, DMDModule)
    assert module.generator.config.causal and not module.teacher.config.causal
    assert (module.rollout_frames, module.window_frames) == (rollout_frames, 21)
    # Self-Forcing's cond + 3 (cond - uncond) is uncond + 4 (cond - uncond), the library's convention
    assert module.hparams.critic_updates_per_generator == 5 and module.hparams.real_guidance_scale == 4.0
    assert module.hparams.exit_step_draw == "per_rollout"
    embeddings, _ = module.text_encoder(["a cat sits on a mat"])
    assert embeddings.shape[-1] == 32
    if experiment == "extend_100s":  # windows inside the rollout start with an image latent
        assert module.window_reencoder.mode == "reencode" and module.window_reencoder.mask_first_chunk
    else:
        assert module.window_reencoder is None


def test_paper_windows_inside_a_rollout_are_reencoded(compose_train, tiny_wan_dir):
    import hydra

    root, z = tiny_wan_dir
    cfg = compose_train(
        [
            "experiment=extend_100s",
            f"wan_dir={root}",
            f"student_ckpt={root / 'student.ckpt'}",
            "model=tiny",
            f"++model.in_channels={z}",
            f"++model.out_channels={z}",
            "++model.text_dim=32",
            f"stage.student.latent_shape=[{z},8,8]",
            "codec.dtype=float32",
            "text.dtype=float32",
            "stage.rollout_frames=12",
            "stage.window_frames=6",
            "stage.window_mode=last",
            "stage.student.cache_window_frames=6",
        ]
    )
    module = hydra.utils.instantiate(cfg.stage)
    context, _ = module._contexts(["a cat sits on a mat"])
    window, start = module._rollout_window(context, module._rng(0), keep_graph=True)
    assert start == 6 and window.shape[2] == 6
    chunk = module.generator.config.num_frames_per_chunk
    weight = module.generator.patch_embedding.weight
    (masked,) = torch.autograd.grad(window[:, :, :chunk].sum(), weight, retain_graph=True, allow_unused=True)
    assert masked is None or torch.all(masked == 0)  # the first chunk gives the generator no gradient
    (rest,) = torch.autograd.grad(window[:, :, chunk:].sum(), weight, retain_graph=True)
    assert rest.abs().sum() > 0
    # the same rollout without re-encoding: only the first frame differs
    module.window_reencoder = None
    plain, _ = module._rollout_window(context, module._rng(0), keep_graph=False)
    torch.testing.assert_close(window[:, :, 1:].detach(), plain[:, :, 1:])
    assert not torch.allclose(window[:, :, :1].detach(), plain[:, :, :1])
