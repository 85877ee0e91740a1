"""UMT5TextEncoder and the prompt-embedding cache, on a tiny random umT5 and a locally built tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from sfpp.text import PromptEmbeddingCache, TextEncoder, UMT5TextEncoder, pad_embeddings

SENTENCES = [
    "a red square moves left",
    "two blue squares bounce off the walls",
    "a green circle slowly drifts up and down",
    "a cat sits on a mat",
]
MAX_LENGTH = 12


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on SENTENCES that appends </s>, like T5's."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_model(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    return UMT5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def wan_layout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers Wan-style directory: text_encoder/ and tokenizer/ subfolders."""
    root = tmp_path_factory.mktemp("umt5")
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    build_model(len(tokenizer)).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture
def encoder(wan_layout_dir: Path) -> UMT5TextEncoder:
    return UMT5TextEncoder(wan_layout_dir, max_length=MAX_LENGTH)


def reference_embeddings(root: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """What Wan computes: pad to max_length, encode, keep the real tokens, zero the rest."""
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    model = UMT5EncoderModel.from_pretrained(root / "text_encoder", local_files_only=True).eval()
    tokens = tokenizer(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    mask = tokens.attention_mask.bool()
    return hidden * mask[..., None], mask


def test_encoder_shapes_mask_and_zero_padding(encoder: UMT5TextEncoder) -> None:
    assert isinstance(encoder, TextEncoder)
    assert (encoder.embed_dim, encoder.max_length) == (32, MAX_LENGTH)
    embeddings, mask = encoder(["a red square", "two blue squares bounce off the walls"])
    assert embeddings.shape == (2, MAX_LENGTH, 32) and embeddings.dtype == torch.float32
    assert mask.dtype == torch.bool
    # 3 and 7 words, plus </s>.
    assert mask.sum(dim=1).tolist() == [4, 8]
    assert mask[0, :4].all() and not mask[0, 4:].any()
    assert torch.all(embeddings[~mask] == 0)
    assert torch.all(embeddings[mask].abs().sum(-1) > 0)


def test_encoder_matches_a_direct_transformers_computation(
    encoder: UMT5TextEncoder, wan_layout_dir: Path
) -> None:
    prompts = ["a cat sits on a mat", "a green circle", "a red square moves left"]
    embeddings, mask = encoder.encode(prompts)
    expected, expected_mask = reference_embeddings(wan_layout_dir, prompts)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)


def test_each_prompt_is_encoded_once(encoder: UMT5TextEncoder) -> None:
    calls: list[int] = []  # batch size of every forward call of the model
    encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    first, _ = encoder(["a cat", "a cat", "a red square"])
    assert calls == [2]  # the duplicate is encoded once
    again, _ = encoder(["a red square", "a cat"])
    assert calls == [2]  # all cached: the model is not called
    torch.testing.assert_close(again, first[[2, 0]])
    encoder(["a cat", "a blue square"])
    assert calls == [2, 1]  # only the new prompt
    assert len(encoder.cache) == 3 and encoder.cache.hits == 3


def test_cache_size_zero_recomputes(wan_layout_dir: Path) -> None:
    encoder = UMT5TextEncoder(wan_layout_dir, max_length=MAX_LENGTH, cache_size=0)
    calls: list[int] = []
    encoder.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    encoder(["a cat"])
    encoder(["a cat"])
    assert len(calls) == 2 and len(encoder.cache) == 0


def test_encoder_loads_lazily_and_from_a_flat_directory(wan_layout_dir: Path, tmp_path: Path) -> None:
    for sub in ("tokenizer", "text_encoder"):
        for file in (wan_layout_dir / sub).iterdir():
            shutil.copy(file, tmp_path / file.name)
    encoder = UMT5TextEncoder(tmp_path, max_length=MAX_LENGTH, encode_batch_size=1)
    assert encoder.model_dir == encoder.tokenizer_dir == tmp_path
    assert encoder._model is None and encoder._tokenizer is None
    embeddings, _ = encoder(["a cat", "a green circle"])
    expected, _ = reference_embeddings(wan_layout_dir, ["a cat", "a green circle"])
    torch.testing.assert_close(embeddings, expected, rtol=1e-5, atol=1e-5)
    assert not encoder.model.training
    assert all(not p.requires_grad for p in encoder.model.parameters())


def test_bfloat16_outputs(wan_layout_dir: Path) -> None:
    encoder = UMT5TextEncoder(wan_layout_dir, max_length=MAX_LENGTH, dtype="bfloat16")
    embeddings, mask = encoder(["a cat"])
    assert embeddings.dtype == torch.bfloat16 and torch.all(embeddings[~mask] == 0)


def test_long_prompts_are_truncated_with_a_warning(encoder: UMT5TextEncoder) -> None:
    long_prompt = " ".join(["a red square moves left"] * 4)
    with pytest.warns(UserWarning, match="text.max_length=12"):
        embeddings, mask = encoder([long_prompt])
    assert mask.all() and embeddings.shape == (1, MAX_LENGTH, 32)


def test_encoder_rejects_a_bare_string_and_an_empty_batch(encoder: UMT5TextEncoder) -> None:
    with pytest.raises(TypeError, match="wrap it in a list"):
        encoder("a cat")
    with pytest.raises(ValueError, match="at least one prompt"):
        encoder([])


def test_missing_path_and_missing_files(wan_layout_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path / 'nope'}' does not exist.*text_encoder/"):
        UMT5TextEncoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no umT5 encoder .*config.json.*no tokenizer"):
        UMT5TextEncoder(tmp_path)
    shutil.copytree(wan_layout_dir / "tokenizer", tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match=f"'{tmp_path / 'text_encoder'}' or '{tmp_path}'") as error:
        UMT5TextEncoder(tmp_path)
    assert "no tokenizer" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# PromptEmbeddingCache and pad_embeddings


def test_cache_is_lru_and_stores_compact_cpu_copies() -> None:
    cache = PromptEmbeddingCache(max_entries=2)
    batch = torch.randn(3, 5, 4)
    cache.put("a", batch[0, :2], torch.ones(2, dtype=torch.bool))
    cache.put("b", batch[1, :3], torch.ones(3, dtype=torch.bool))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", batch[2, :1], torch.ones(1, dtype=torch.bool))
    assert "b" not in cache and "a" in cache and "c" in cache
    embedding, _ = cache.get("a")
    assert embedding.untyped_storage().nbytes() == 2 * 4 * 4  # its own storage, not the batch's
    batch.zero_()
    assert embedding.abs().sum() > 0
    assert (cache.hits, cache.misses) == (2, 0)
    assert cache.get("b") is None and cache.misses == 1
    with pytest.raises(ValueError, match="text.cache_size"):
        PromptEmbeddingCache(-1)


def test_pad_embeddings() -> None:
    entries = [
        (torch.ones(2, 3), torch.ones(2, dtype=torch.bool)),
        (torch.full((4, 3), 2.0), torch.ones(4, dtype=torch.bool)),
    ]
    embeddings, mask = pad_embeddings(entries, max_length=5)
    assert embeddings.shape == (2, 5, 3)
    assert mask.tolist() == [[True, True, False, False, False], [True, True, True, True, False]]
    assert embeddings[0, 2:].abs().sum() == 0 and embeddings[1, :4].eq(2).all()
    with pytest.raises(ValueError, match="max_length=3"):
        pad_embeddings(entries, max_length=3)
