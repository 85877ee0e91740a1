"""The documentation: every page of the site's navigation exists, generated pages match their JSON,
the repository speaks of the project alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sfpp.apps.results_pages import BEGIN, END, render_all, teacher_history_page

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_in_the_navigation_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 20
    missing = [page for page in pages if not (ROOT / "docs" / page).exists()]
    assert missing == []


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    suffixes = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".ipynb", ".html", ".json", ""}
    return [ROOT / n for n in names.split("\n") if n and Path(n).suffix in suffixes and (ROOT / n).is_file()]


def test_docs_holds_only_what_a_page_uses() -> None:
    """Every picture under docs/ is named by a page of docs/ or by the README."""
    texts = [path.read_text() for path in (ROOT / "docs").rglob("*.md")] + [(ROOT / "README.md").read_text()]
    unused = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "docs").rglob("*"))
        if path.is_file()
        and path.suffix not in (".md", ".json")
        and not any(path.name in text for text in texts)
    ]
    assert unused == []


def test_no_file_speaks_of_sessions_or_the_method_notes() -> None:
    words = re.compile(r"(?i:\bsessions?\b)|METHOD\.md")
    this_file = Path(__file__).resolve()
    offending = []
    for path in _tracked_text_files():
        if path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), start=1):
            if words.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert offending == []


def test_results_pages_are_generated_from_the_committed_json() -> None:
    pages = render_all(ROOT)
    assert ROOT / "docs" / "results" / "demo.md" in pages
    stale = [str(path.relative_to(ROOT)) for path, text in pages.items() if path.read_text() != text]
    assert stale == [], "run python -m sfpp.apps.results_pages"
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme


def test_every_results_page_is_generated() -> None:
    pages = render_all(ROOT)
    handwritten = [
        page.name for page in sorted((ROOT / "docs" / "results").glob("*.md")) if page not in pages
    ]
    assert handwritten == []


def test_the_history_page_renders_its_blocks_and_rejects_bad_ones() -> None:
    data = {
        "title": "History",
        "measured": "2026-11-30",
        "machine": "a CPU",
        "intro": "Intro.",
        "blocks": [
            {"text": "Round 1."},
            {"table": {"columns": ["run", "clean"], "rows": [["a", "0.34"], ["**b**", "**0.63**"]]}},
            {"figure": {"alt": "samples", "src": "images/x.png"}},
        ],
    }
    page = teacher_history_page(data)
    assert (
        "Measured 2026-11-30, on a CPU. Intro.\n\nRound 1.\n\n| run | clean |\n| --- | --- |\n| a | 0.34 |"
        in page
    )
    assert page.endswith("![samples](images/x.png)\n")
    with pytest.raises(ValueError, match="rows of"):
        teacher_history_page({**data, "blocks": [{"table": {"columns": ["a", "b"], "rows": [["1"]]}}]})
    with pytest.raises(ValueError, match="none of text, figure, table"):
        teacher_history_page({**data, "blocks": [{"plot": "x"}]})


def test_results_pages_check_flags_a_stale_page(tmp_path: Path) -> None:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    for name in ("demo.json",):
        (tmp_path / "docs" / "results" / name).write_text((ROOT / "docs" / "results" / name).read_text())
    (tmp_path / "README.md").write_text(f"# x\n{BEGIN}\nold\n{END}\n")
    check = [sys.executable, "-m", "sfpp.apps.results_pages", "--root", str(tmp_path), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 1
    subprocess.run(check[:-1], check=True, capture_output=True)
    assert subprocess.run(check, capture_output=True).returncode == 0
    assert "Self-Forcing++ student" in (tmp_path / "README.md").read_text()


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
