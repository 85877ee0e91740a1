from __future__ import annotations

from collections import OrderedDict

import pytest
from omegaconf import OmegaConf

from sfpp.utils.instantiate import instantiate_callbacks, instantiate_loggers, instantiate_named


def test_builds_entries_in_order_and_skips_null() -> None:
    cfg = OmegaConf.create(
        {
            "first": {"_target_": "collections.OrderedDict", "a": 1},
            "dropped": None,
            "second": {"_target_": "collections.Counter", "b": 2},
        }
    )
    built = instantiate_named(cfg, "callbacks")
    assert [type(obj).__name__ for obj in built] == ["OrderedDict", "Counter"]
    assert built[0] == OrderedDict(a=1)


def test_none_and_empty_give_no_components() -> None:
    assert instantiate_callbacks(None) == []
    assert instantiate_loggers(OmegaConf.create({})) == []


def test_entry_without_target_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"`logger\.csv` has no `_target_`"):
        instantiate_loggers(OmegaConf.create({"csv": {"save_dir": "."}}))


def test_group_that_is_not_a_dict_is_an_error() -> None:
    with pytest.raises(TypeError, match="dict of named components"):
        instantiate_callbacks(OmegaConf.create([{"_target_": "collections.Counter"}]))
