"""`import sfpp` is cheap: it pulls in no heavy dependency."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "lightning", "hydra", "diffusers", "transformers")


def test_import_sfpp_imports_no_heavy_dependency() -> None:
    code = (
        "import json, sys, sfpp; "
        f"print(json.dumps({{'version': sfpp.__version__, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout)
    assert report["version"] == "0.1.0"
    assert report["loaded"] == []
