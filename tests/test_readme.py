"""The README's code blocks work when pasted."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_quickstart_runs():
    blocks = [b for b in _python_blocks() if "stream_rollout" in b]
    assert blocks, "the README lost its quickstart"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cache bytes, constant whatever the length" in result.stdout
    assert result.stdout.count("(1, 4, 3, 8, 8)") == 10  # 30 frames in chunks of 3


def test_make_targets_in_the_readme_exist():
    makefile = (README.parent / "Makefile").read_text()
    for target in set(re.findall(r"`make ([a-z-]+)`", README.read_text())):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_the_evaluation_guide_example_runs():
    import ast
    import textwrap

    guide = README.parent / "docs" / "howto" / "evaluate.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.DOTALL)
    assert blocks, "the evaluation guide lost its example"
    code = textwrap.dedent(blocks[0])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shifts = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert len(shifts) == 14 and shifts["luma_mean"] < -1 and shifts["luma_median"] < -0.5  # darker frames
