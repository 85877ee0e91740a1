"""The notebooks under notebooks/: stored clean, every code cell compiles, and (slow) each runs top to bottom.

The slow test executes each notebook with nbclient in a fresh kernel whose Python is the one running
the tests (``sys.executable``, i.e. the project's venv), not whatever a ``python3`` kernelspec on the
machine points to: it writes its own kernelspec into a temporary directory and checks, with an extra
cell appended to the executed copy, that the kernel really ran in this interpreter's prefix.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"01_components_tour", "02_rolling_kv_cache", "03_rewards_and_metrics"}
CELL_TIMEOUT_S = 300
KERNEL_NAME = "sfpp-test-python"
PREFIX_MARKER = "kernel sys.prefix:"


def _read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # raises nbformat.ValidationError naming the problem
    return nb


def _without_magics(source: str) -> str:
    """Blank out IPython magics and shell escapes (``%...``, ``!...``), keeping line numbers."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def test_the_notebooks_are_there():
    assert {path.stem for path in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_valid_clean_and_compiles(path: Path):
    nb = _read(path)
    assert nb.metadata.get("kernelspec", {}).get("language") == "python"
    for index, cell in enumerate(nb.cells):
        text = cell.source
        for marker in ("TODO", "FIXME", "XXX"):
            assert marker not in text, f"{path.name} cell {index} contains {marker}"
        if cell.cell_type != "code":
            continue
        assert not cell.outputs, f"{path.name} cell {index} has stored outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name} cell {index} has an execution count; clear it"
        compile(_without_magics(text), f"{path.name}[cell {index}]", "exec")


def _write_kernelspec(kernels_dir: Path) -> None:
    """A kernelspec that launches ipykernel with exactly this interpreter."""
    from ipykernel.kernelspec import write_kernel_spec

    # get_kernel_dict puts sys.executable into argv; pin it explicitly all the same.
    write_kernel_spec(
        kernels_dir / KERNEL_NAME,
        overrides={
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "sfpp tests",
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path):
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    kernels_dir = tmp_path / "kernels"
    _write_kernelspec(kernels_dir)
    spec_manager = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    manager = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=spec_manager)

    nb = _read(path)
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nprint({PREFIX_MARKER!r}, sys.prefix)"))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # the notebooks are small; do not compete with other jobs

    client = NotebookClient(
        nb,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    try:
        client.execute(env=env, cleanup_kc=True)  # cleanup_kc: shut the kernel down afterwards
    except CellExecutionError as error:
        pytest.fail(f"{path.name} failed:\n{error}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

    last_outputs = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    assert f"{PREFIX_MARKER} {sys.prefix}" in last_outputs, last_outputs
