"""The built-in world (sfpp.world) and its LightningDataModule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sfpp.world import (
    COLOURS,
    PALETTE,
    SHAPES,
    VOCABULARY,
    BackgroundSpec,
    ObjectSpec,
    VideoSpec,
    WorldDataModule,
    WorldSpec,
    all_prompts,
    heldout_prompts,
    parse_prompt,
    prompt_of,
    prompt_words,
    render,
    sample_spec,
    shape_mask,
    spec_from_prompt,
    train_prompts,
)
from sfpp.world.scene import object_pixel_positions, object_positions


def _content(spec: VideoSpec) -> tuple:
    return tuple((o.colour, o.shape) for o in spec.objects), spec.background.kind


# -- rendering -----------------------------------------------------------------------------------


def test_render_layout_dtype_and_range() -> None:
    video = render(sample_spec(0), 8)
    assert video.shape == (3, 8, 16, 16)
    assert video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert render(sample_spec(0, WorldSpec(frame_size=24)), 3).shape == (3, 3, 24, 24)


def test_same_seed_same_video_and_different_seed_different_video() -> None:
    assert sample_spec(7) == sample_spec(7)
    np.testing.assert_array_equal(render(sample_spec(7), 16), render(sample_spec(7), 16))
    assert not np.array_equal(render(sample_spec(7), 16), render(sample_spec(8), 16))
    prompt = "a red circle bouncing on a dark background"
    np.testing.assert_array_equal(
        render(spec_from_prompt(prompt, 3), 8), render(spec_from_prompt(prompt, 3), 8)
    )
    assert not np.array_equal(render(spec_from_prompt(prompt, 3), 8), render(spec_from_prompt(prompt, 4), 8))


@pytest.mark.parametrize("seed", range(6))
def test_any_window_equals_the_slice_of_a_longer_render(seed: int) -> None:
    spec = sample_spec(seed)
    full = render(spec, 1000)
    for start, length in [(0, 8), (1, 7), (333, 21), (992, 8)]:
        np.testing.assert_array_equal(
            render(spec, length, start_frame=start), full[:, start : start + length]
        )


def test_objects_stay_whole_inside_the_frame_for_1000_frames() -> None:
    frames = np.arange(1000)
    for seed in range(40):
        spec = sample_spec(seed)
        for obj in spec.objects:
            limit = spec.frame_size - obj.size
            pos = object_positions(obj, spec.frame_size, frames)  # (F, 2)
            assert pos.min() >= 0.0 and pos.max() <= limit
            pixels = object_pixel_positions(obj, spec.frame_size, frames)
            assert pixels.min() >= 0 and pixels.max() <= limit
            # constant velocity with reflections: per-frame steps never exceed the speed
            steps = np.abs(np.diff(pos, axis=0))
            assert (steps <= np.abs(obj.velocity) + 1e-9).all()
            # it bounces: in 1000 frames every object touches both walls of some axis
            assert pos.min() < 0.5 and pos.max() > limit - 0.5
        if len(spec.objects) == 1:
            obj = spec.objects[0]
            video = render(spec, 1000)
            colour = np.asarray(PALETTE[obj.colour], dtype=np.float32)[:, None, None, None]
            is_object = (video == colour).all(axis=0)  # (F, H, W)
            mask = shape_mask(obj.shape, obj.size)
            assert (is_object.sum(axis=(1, 2)) == mask.sum()).all()  # never clipped, never deformed
            for t, (x, y) in enumerate(object_pixel_positions(obj, spec.frame_size, frames[:50])):
                np.testing.assert_array_equal(is_object[t, y : y + obj.size, x : x + obj.size], mask)


def test_first_named_object_is_in_front() -> None:
    front = ObjectSpec("square", "red", 6, (5.0, 5.0), (0.3, 0.0))
    back = ObjectSpec("square", "blue", 6, (5.0, 5.0), (0.3, 0.0))
    background = BackgroundSpec("dark", (-0.8, -0.8, -0.8))
    video = render(VideoSpec((front, back), background), 1)
    assert np.array_equal(video[:, 0, 8, 8], np.asarray(PALETTE["red"], dtype=np.float32))
    video = render(VideoSpec((back, front), background), 1)
    assert np.array_equal(video[:, 0, 8, 8], np.asarray(PALETTE["blue"], dtype=np.float32))


def test_backgrounds_are_dark_and_only_the_changing_one_drifts() -> None:
    for seed in range(30):
        for kind in ("dark background", "slowly changing background"):
            spec = spec_from_prompt(f"a green square bouncing on a {kind}", seed)
            video = render(spec, 200)
            corner_free = video.max(axis=0) < 0.0  # background pixels (objects have a channel at 1)
            assert video.max(axis=0)[corner_free].max() <= -0.55
            track = video[:, :, 0, 0][:, corner_free[:, 0, 0]]  # (3, frames where (0, 0) is background)
            drift = np.ptp(track, axis=1).max()
            if spec.background.kind == "dark":
                assert drift == 0.0
            else:
                assert drift > 0.1


def test_shape_masks_are_distinct_and_fill_their_box() -> None:
    for size in range(5, 8):
        masks = {shape: shape_mask(shape, size) for shape in SHAPES}
        assert masks["square"].all()
        for mask in masks.values():
            assert mask.any(axis=0).all() and mask.any(axis=1).all()  # the bounding box is size x size
        assert masks["circle"].sum() < masks["square"].sum()
        assert not np.array_equal(masks["circle"], masks["triangle"])
    with pytest.raises(ValueError, match="shape"):
        shape_mask("hexagon", 6)


def test_sampled_specs_respect_the_world_settings() -> None:
    world = WorldSpec()
    counts = {1: 0, 2: 0}
    for seed in range(400):
        spec = sample_spec(seed, world)
        counts[len(spec.objects)] += 1
        colours = [o.colour for o in spec.objects]
        assert len(set(colours)) == len(colours)
        for obj in spec.objects:
            assert world.min_size <= obj.size <= world.max_size
            assert world.min_speed - 1e-9 <= float(np.hypot(*obj.velocity)) <= world.max_speed + 1e-9
    assert 150 <= counts[1] <= 250  # one- and two-object videos equally likely
    single = WorldSpec(max_objects=1)
    assert all(len(sample_spec(s, single).objects) == 1 for s in range(50))


def test_world_settings_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="max_objects"):
        WorldSpec(max_objects=3)
    with pytest.raises(ValueError, match="frame_size"):
        WorldSpec(frame_size=8)
    with pytest.raises(ValueError, match="min_speed"):
        WorldSpec(min_speed=0.0)
    with pytest.raises(ValueError, match="num_frames"):
        render(sample_spec(0), 0)


# -- prompts -------------------------------------------------------------------------------------


def test_prompts_parse_back_to_the_same_content() -> None:
    for seed in range(200):
        spec = sample_spec(seed)
        prompt = prompt_of(spec)
        assert _content(spec_from_prompt(prompt, seed + 1)) == _content(spec)
        content = parse_prompt(prompt)
        assert content.objects == tuple((o.colour, o.shape) for o in spec.objects)
    for prompt in all_prompts():
        assert prompt_of(spec_from_prompt(prompt, 0)) == prompt


def test_prompt_examples_and_normalisation() -> None:
    spec = spec_from_prompt("A RED circle and a Blue square, bouncing on a slowly changing background.", 0)
    assert _content(spec) == ((("red", "circle"), ("blue", "square")), "changing")
    assert prompt_of(spec) == "a red circle and a blue square bouncing on a slowly changing background"
    assert prompt_words("") == []


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a purple circle bouncing on a dark background", "purple"),
        ("a red bouncing on a dark background", "grammar"),
        ("a red circle and a red square bouncing on a dark background", "distinct"),
        ("a red circle and a blue square and a green triangle bouncing on a dark background", "at most 2"),
        ("a red circle bouncing on a dark background dark", "extra words"),
        ("", "grammar"),
    ],
)
def test_bad_prompts_raise_clear_errors(prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)


def test_unknown_word_error_lists_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="not in the world's vocabulary") as info:
        prompt_words("a purple circle")
    assert "'purple'" in str(info.value) and all(word in str(info.value) for word in VOCABULARY)


def test_spec_from_prompt_rejects_more_objects_than_the_world_allows() -> None:
    with pytest.raises(ValueError, match="max_objects=1"):
        spec_from_prompt(
            "a red circle and a blue square bouncing on a dark background", 0, WorldSpec(max_objects=1)
        )


def test_vocabulary_is_sorted_and_covers_every_prompt() -> None:
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    words = {w for p in all_prompts() for w in p.split()}
    assert words == set(VOCABULARY)
    assert max(len(p.split()) for p in all_prompts()) == 13


def test_prompt_set_and_heldout_split() -> None:
    everything, train, heldout = all_prompts(), train_prompts(), heldout_prompts()
    assert len(everything) == 6 * 3 * 2 + 6 * 5 * 3 * 3 * 2 == 576
    assert len(all_prompts(1)) == 36
    assert set(train).isdisjoint(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert len(heldout) == 73  # pinned: a change of the split would silently change evaluations
    assert 0.05 < len(heldout) / len(everything) < 0.2
    assert heldout_prompts(1) and set(heldout_prompts(1)) <= set(heldout)
    for colour, shape in itertools.product(COLOURS, SHAPES):  # every object is seen in training
        assert any(f"a {colour} {shape} bouncing" in p for p in train)
    assert all(prompt_of(sample_spec(s, prompts=train)) in set(train) for s in range(100))


# -- datamodule ----------------------------------------------------------------------------------


def _first_batch(loader: torch.utils.data.DataLoader) -> dict:
    return next(iter(loader))


def test_datamodule_batches_have_the_right_layout() -> None:
    dm = WorldDataModule(num_frames=6, batch_size=5, seed=3, val_size=7)
    batch = _first_batch(dm.train_dataloader())
    assert batch["video"].shape == (5, 3, 6, 16, 16)
    assert batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
    assert len(batch["prompt"]) == 5 and set(batch["prompt"]) <= set(train_prompts())
    val = list(dm.val_dataloader())
    assert [b["video"].shape[0] for b in val] == [5, 2]
    val_prompts = [p for b in val for p in b["prompt"]]
    assert val_prompts == list(heldout_prompts()[:7])  # fixed, held-out, in order
    assert len(dm.train_dataloader()) == 1_000_000 // 5


def test_datamodule_is_reproducible_from_its_seed() -> None:
    a = _first_batch(WorldDataModule(batch_size=4, seed=11).train_dataloader())
    b = _first_batch(WorldDataModule(batch_size=4, seed=11).train_dataloader())
    c = _first_batch(WorldDataModule(batch_size=4, seed=12).train_dataloader())
    assert torch.equal(a["video"], b["video"]) and a["prompt"] == b["prompt"]
    assert not torch.equal(a["video"], c["video"])
    va = _first_batch(WorldDataModule(batch_size=4, seed=11).val_dataloader())
    assert not torch.equal(va["video"], a["video"])  # validation is its own stream


def test_datamodule_ground_truth_is_a_long_consistent_video() -> None:
    dm = WorldDataModule(frame_size=20, max_objects=1)
    prompt = "a cyan triangle bouncing on a slowly changing background"
    long = dm.ground_truth(prompt, seed=5, num_frames=1000)
    assert long.shape == (3, 1000, 20, 20)
    assert torch.equal(dm.ground_truth(prompt, seed=5, num_frames=8, start_frame=500), long[:, 500:508])
    assert all(len(parse_prompt(p).objects) == 1 for p in dm.train_prompts + dm.val_prompts)


def test_datamodule_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        WorldDataModule(batch_size=0)
    with pytest.raises(ValueError, match="max_objects"):
        WorldDataModule(max_objects=4)
    with pytest.raises(IndexError):
        WorldDataModule(train_size=3).train_dataset[3]


def test_resumable_loader_continues_mid_epoch():
    from sfpp.data.resumable import ResumableDataLoader

    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=2)
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert seen == [[0, 1], [2, 3]] and state == {"batches_consumed": 2}
    resumed = ResumableDataLoader(data, batch_size=2)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == [[4, 5], [6, 7], [8, 9]]
    assert [b.tolist() for b in resumed][0] == [0, 1]  # the offset applies to one pass only


def test_resumable_loader_accepts_a_sampler_injected_by_lightning():
    from torch.utils.data import SequentialSampler

    from sfpp.data.resumable import ResumableDataLoader

    data = list(range(6))
    loader = ResumableDataLoader(data, batch_size=2, sampler=SequentialSampler(data))
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5]]
    with pytest.warns(UserWarning, match="restarts the epoch"):
        loader.load_state_dict({"batches_consumed": 1})
    with pytest.raises(ValueError, match="shuffle"):
        ResumableDataLoader(data, batch_size=2, shuffle=True)


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_rank_resumes_mid_epoch_with_a_distributed_sampler(shuffle):
    """Lightning injects a DistributedSampler for several processes; the loader makes it resumable."""
    from torch.utils.data.distributed import DistributedSampler

    from sfpp.data.resumable import ResumableDataLoader, ResumableDistributedSampler

    data = list(range(20))
    for rank in range(2):

        def loader(rank=rank):
            made = ResumableDataLoader(
                data,
                batch_size=2,
                sampler=DistributedSampler(data, num_replicas=2, rank=rank, shuffle=shuffle, seed=3),
            )
            made.sampler.set_epoch(1)  # what Lightning does at every epoch
            return made

        straight = [b.tolist() for b in loader()]
        first = loader()
        it = iter(first)
        [next(it) for _ in range(2)]
        assert isinstance(first.sampler, ResumableDistributedSampler)
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        assert [b.tolist() for b in resumed] == straight[2:], rank
        assert sorted(sum(straight, [])) == sorted(data[rank::2]) or shuffle


def test_the_prompt_loader_resumes_mid_epoch(tmp_path):
    from sfpp.data.prompts import PromptDataModule

    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(12)) + "\n")

    def loader():
        data = PromptDataModule(path, batch_size=2, shuffle=True, seed=5)
        data.setup("fit")
        made = data.train_dataloader()
        made.sampler.set_epoch(2)
        return made

    straight = [list(b) for b in loader()]
    first = loader()
    it = iter(first)
    [next(it) for _ in range(3)]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert [list(b) for b in resumed] == straight[3:]


# -- images first, then videos -------------------------------------------------------------------


def test_image_batches_come_first_then_the_same_video_batches() -> None:
    plain = WorldDataModule(num_frames=4, batch_size=3, seed=5, train_size=30)
    mixed = WorldDataModule(
        num_frames=4, batch_size=3, seed=5, train_size=30, image_batch_size=2, image_batches=2
    )
    batches = list(mixed.train_dataloader())
    assert [tuple(b["video"].shape) for b in batches[:3]] == [
        (2, 3, 1, 16, 16),
        (2, 3, 1, 16, 16),
        (3, 3, 4, 16, 16),
    ]
    assert len(batches) == len(mixed.train_dataloader()) == 2 + 30 // 3
    for video, reference in zip(batches[2:], plain.train_dataloader(), strict=True):
        assert torch.equal(video["video"], reference["video"]) and video["prompt"] == reference["prompt"]
    images = torch.cat([b["video"] for b in batches[:2]])  # four distinct training frames
    assert len({tuple(frame.flatten().tolist()) for frame in images}) == 4
    assert all(set(b["prompt"]) <= set(train_prompts()) for b in batches[:2])
    again = list(
        WorldDataModule(
            num_frames=4, batch_size=3, seed=5, train_size=30, image_batch_size=2, image_batches=2
        ).train_dataloader()
    )
    assert torch.equal(again[0]["video"], batches[0]["video"])


def test_a_resumed_loader_continues_inside_and_after_the_image_batches() -> None:
    def fresh():
        return WorldDataModule(
            num_frames=2, batch_size=2, seed=1, train_size=8, image_batch_size=3, image_batches=2
        )

    full = list(fresh().train_dataloader())
    for consumed in (1, 3):
        loader = fresh().train_dataloader()
        it = iter(loader)
        for _ in range(consumed):
            next(it)
        resumed = fresh().train_dataloader()
        resumed.load_state_dict(loader.state_dict())
        rest = list(resumed)
        assert len(rest) == len(full) - consumed
        assert all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, full[consumed:], strict=True))


def test_image_batch_settings_are_checked() -> None:
    from sfpp.world import ImagesThenVideos, WorldVideoDataset

    with pytest.raises(ValueError, match="image_batches"):
        WorldDataModule(image_batches=-1)
    with pytest.raises(ValueError, match="image_batch_size"):
        WorldDataModule(image_batch_size=0, image_batches=3)
    world = WorldDataModule().world
    clips = WorldVideoDataset(world, train_prompts(), 4, 10, 0, 0)
    with pytest.raises(ValueError, match="one-frame"):
        ImagesThenVideos(clips, clips, 2, 2, 1)
    images = WorldVideoDataset(world, train_prompts(), 1, 3, 0, 2)
    with pytest.raises(ValueError, match="need 4 images"):
        ImagesThenVideos(clips, images, 2, 2, 2)
    with pytest.raises(IndexError):
        ImagesThenVideos(clips, images, 2, 3, 1)[1 + 10 // 2]
