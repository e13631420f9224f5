"""Every tutorial runs end to end (tiny sizes) and writes its figure.

Each `tutorials/[0-9][0-9]_*.py` is run in its own Python process with MINIDNI_TINY=1 (small data, few epochs)
and MINIDNI_TUTORIAL_OUT pointing at a temporary directory, so that the tutorial's own asserts - the checks of
the math - run in the test suite, and nothing is written into the source tree.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("[0-9][0-9]_*.py"))


def test_tutorials_exist():
    assert TUTORIALS, "no tutorials/[0-9][0-9]_*.py found"


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_tiny(script, tmp_path):
    env = dict(os.environ, MINIDNI_TINY="1", MINIDNI_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg")
    env.pop("MINIDNI_BACKEND", None)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
        f"\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    pngs = list(tmp_path.glob("*.png"))
    assert pngs, f"{script.name} wrote no PNG into MINIDNI_TUTORIAL_OUT ({tmp_path})"
    assert all(p.stat().st_size > 0 for p in pngs)
