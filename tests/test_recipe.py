"""The recipe page (docs/howto/recipe.md) states what the paper-scale experiments compose to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

PAGE = Path(__file__).parents[1] / "docs" / "howto" / "recipe.md"
BACKTICKED = re.compile(r"`([^`]*)`")


def _checked_rows() -> list[tuple[str, list[str], list[object]]]:
    """``(setting, keys, values)`` of every row whose sfpp value cell is only backticked values."""
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("setting", "---"):
            continue
        keys, values = BACKTICKED.findall(cells[2]), BACKTICKED.findall(cells[3])
        if not keys or not values or BACKTICKED.sub("", cells[3]).strip(" ,"):
            continue
        assert len(keys) == len(values), f"row {cells[0]!r}: {len(keys)} keys, {len(values)} values"
        rows.append((cells[0], keys, [yaml.safe_load(v) for v in values]))
    return rows


def test_the_page_checks_most_of_its_rows():
    rows = _checked_rows()
    assert len(rows) >= 24, [name for name, _, _ in rows]
    verdicts = [line.split("|")[5].strip() for line in PAGE.read_text().splitlines() if line.count("|") == 7][
        2:
    ]
    assert verdicts and set(verdicts) <= {"equal", "different"}


@pytest.mark.parametrize("experiment", ["self_forcing_1_3b", "extend_100s"])
def test_the_composed_experiments_equal_the_table(compose_train, experiment):
    cfg = compose_train(
        [f"experiment={experiment}", "wan_dir=/weights", "student_ckpt=/s.ckpt"], shrink=False
    )
    mismatches = []
    for name, keys, values in _checked_rows():
        for key, value in zip(keys, values, strict=True):
            composed = OmegaConf.select(cfg, key, throw_on_missing=False)
            if OmegaConf.is_config(composed):
                composed = OmegaConf.to_container(composed, resolve=True)
            if composed != value:
                mismatches.append(f"{name}: {key} is {composed!r}, the page says {value!r}")
    assert mismatches == []
    # the rows whose sfpp value is prose
    assert cfg.stage.teacher.path == "/weights/transformer"
    assert cfg.stage.teacher._target_ == "sfpp.models.wan.build_from_pretrained"
