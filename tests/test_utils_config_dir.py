from __future__ import annotations

from pathlib import Path

import pytest

from sfpp.utils.config_dir import CONFIG_DIR_ENV, find_config_dir, list_group_options


def test_default_is_the_repository_conf_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    config_dir = find_config_dir()
    assert config_dir.is_absolute()
    assert (config_dir / "train.yaml").is_file()


def test_env_var_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert find_config_dir() == tmp_path.resolve()


def test_env_var_to_a_missing_dir_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=CONFIG_DIR_ENV):
        find_config_dir()


def test_list_group_options(tmp_path: Path) -> None:
    (tmp_path / "stage").mkdir()
    for name in ("dmd.yaml", "ode_init.yaml", "README.md"):
        (tmp_path / "stage" / name).write_text("{}\n")
    assert list_group_options("stage", tmp_path) == ["dmd", "ode_init"]
    assert list_group_options("missing_group", tmp_path) == []
