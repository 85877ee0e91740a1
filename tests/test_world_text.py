"""The world's small text encoder (sfpp.world.text)."""

from __future__ import annotations

import pytest
import torch

from sfpp.text.base import TextEncoder
from sfpp.world import VOCABULARY, WorldTextEncoder, all_prompts
from sfpp.world.text import PAD_ID

PROMPTS = [
    "a red circle bouncing on a dark background",
    "a red circle and a blue square bouncing on a slowly changing background",
    "",
]


def test_tokenize_ids_and_mask() -> None:
    encoder = WorldTextEncoder()
    ids, mask = encoder.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (3, 16)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [8, 13, 0]
    assert (ids[~mask] == PAD_ID).all() and (ids[mask] > 0).all()
    assert ids[0, 0].item() == VOCABULARY.index("a") + 1
    every_word, _ = WorldTextEncoder(max_length=20).tokenize([" ".join(VOCABULARY)])
    assert every_word[0, : len(VOCABULARY)].tolist() == list(range(1, len(VOCABULARY) + 1))
    assert max(encoder.tokenize(list(all_prompts()))[1].sum(dim=1)).item() <= encoder.max_length


def test_forward_shapes_and_zeroed_padding() -> None:
    encoder = WorldTextEncoder(embed_dim=32, max_length=14, num_heads=2)
    embeddings, mask = encoder(PROMPTS)
    assert embeddings.shape == (3, 14, 32) and mask.shape == (3, 14)
    assert encoder.embed_dim == 32 and encoder.max_length == 14
    assert torch.isfinite(embeddings).all()
    assert (embeddings[~mask] == 0).all()
    assert (embeddings[mask].abs().sum(dim=-1) > 0).all()
    assert (embeddings[2] == 0).all()  # the empty prompt (CFG null condition) is all zeros
    assert isinstance(encoder, TextEncoder)
    assert torch.equal(encoder.encode(PROMPTS)[0], embeddings)


def test_case_punctuation_and_batch_independence() -> None:
    encoder = WorldTextEncoder().eval()
    a, _ = encoder(["A Red Circle, bouncing on a dark background."])
    b, _ = encoder([PROMPTS[0]])
    batch, _ = encoder(PROMPTS)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(batch[:1], b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_unknown_word_raises_and_lists_the_vocabulary() -> None:
    encoder = WorldTextEncoder()
    with pytest.raises(ValueError, match="'purple'") as info:
        encoder(["a purple circle bouncing on a dark background"])
    assert "vocabulary" in str(info.value)
    assert all(word in str(info.value) for word in VOCABULARY)


def test_too_long_prompt_and_single_string_are_errors() -> None:
    encoder = WorldTextEncoder(max_length=8)
    with pytest.raises(ValueError, match="max_length=8"):
        encoder.tokenize([PROMPTS[1]])
    with pytest.raises(TypeError, match="single string"):
        encoder.tokenize(PROMPTS[0])
    with pytest.raises(ValueError, match="num_heads"):
        WorldTextEncoder(embed_dim=30, num_heads=4)


def test_gradients_reach_every_parameter() -> None:
    encoder = WorldTextEncoder()
    embeddings, mask = encoder(PROMPTS[:2])
    target = torch.linspace(-1, 1, embeddings.numel()).reshape(embeddings.shape)  # (B, L, D)
    ((embeddings - target) ** 2)[mask].mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_freeze_stops_gradients_and_keeps_eval_mode() -> None:
    encoder = WorldTextEncoder()
    assert encoder.training
    frozen = encoder.freeze()
    assert frozen is encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training
    encoder.train()  # e.g. a parent LightningModule switching to training mode
    assert not encoder.training
    embeddings, _ = encoder(PROMPTS)
    assert not embeddings.requires_grad


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a, b, c = WorldTextEncoder(init_seed=1), WorldTextEncoder(init_seed=1), WorldTextEncoder(init_seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)
