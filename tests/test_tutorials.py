"""Every tutorial runs end to end (tiny sizes), passes its own checks and writes every figure it names; each opens
as a notebook; tutorials/README.md lists exactly the tutorials that exist.

Each `tutorials/[0-9][0-9]_*.py` is run in its own Python process with MINIDNI_TINY=1 (small data, few epochs)
and MINIDNI_TUTORIAL_OUT pointing at a temporary directory, so that the tutorial's own asserts - the checks of
the math - run in the test suite, and nothing is written into the source tree. A tutorial names the figures it
writes in a module-level list FIGURES; every one must exist afterwards.

With `pytest --tutorials-full` every tutorial also runs at its default size, the size its text states, where it
asserts its headline claims (the numbers its prose gives); CI does this in a step of its own. Those runs use the
user's data cache, as a tutorial run by hand does, and fetch MNIST into it if it is not there.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIAL_DIR.glob("[0-9][0-9]_*.py"))


def declared_figures(script, stand_in=None):
    """The FIGURES list of a tutorial, read from its source without running it. A figure drawn from generated
    stand-in data instead of MNIST says so in its name: "{stand_in}" in FIGURES is "_stand-in" then, "" otherwise
    (stand_in=True / False; None leaves the placeholder)."""
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURES" for t in node.targets):
            figures = ast.literal_eval(node.value)
            if stand_in is None:
                return figures
            return [f.format(stand_in="_stand-in" if stand_in else "") for f in figures]
    return None


def test_tutorials_exist():
    assert TUTORIALS, "no tutorials/[0-9][0-9]_*.py found"
    numbers = [p.name[:2] for p in TUTORIALS]
    assert len(set(numbers)) == len(numbers), f"two tutorials share a number: {numbers}"
    assert numbers == [f"{i:02d}" for i in range(1, len(numbers) + 1)], f"the numbering has a gap: {numbers}"


def test_readme_lists_exactly_the_tutorials():
    readme = (TUTORIAL_DIR / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\|\s*\d\d\s*\|\s*\[[^\]]+\]\((\d\d_[\w]+\.py)\)", readme, flags=re.M)
    assert listed, "tutorials/README.md has no reading-order table rows like '| 01 | [title](01_name.py) |'"
    assert len(listed) == len(set(listed)), f"a tutorial is listed twice: {listed}"
    files = [p.name for p in TUTORIALS]
    assert sorted(listed) == listed, "the reading-order table is not in numerical order"
    assert set(listed) - set(files) == set(), f"listed but missing: {sorted(set(listed) - set(files))}"
    assert set(files) - set(listed) == set(), f"not listed in tutorials/README.md: {sorted(set(files) - set(listed))}"


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_declares_its_figures_and_checks(script):
    figures = declared_figures(script)
    assert figures, f"{script.name} has no FIGURES = [...] list naming the PNGs it writes"
    assert all(isinstance(f, str) and f.endswith(".png") for f in figures), figures
    assert any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(script.read_text()))), (
        f"{script.name} checks nothing: a tutorial's check cells assert what its math says"
    )


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_opens_as_a_notebook(script):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(script)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert "markdown" in kinds and "code" in kinds, f"{script.name}: cells {kinds}"
    title = next(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert title.startswith(f"# Tutorial {script.name[:2]}:"), f"{script.name}: first prose cell {title[:60]!r}"
    # the percent format round-trips: the notebook written back as a script has the same cells
    again = jupytext.reads(jupytext.writes(notebook, fmt="py:percent"), fmt="py:percent")
    assert [c.source for c in again.cells] == [c.source for c in notebook.cells]


@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_tiny(script, tmp_path):
    run_tutorial(script, tmp_path, tiny=True, timeout=180)


@pytest.mark.tutorial_full
@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_at_default_size(script, tmp_path):
    run_tutorial(script, tmp_path, tiny=False, timeout=900)


def run_tutorial(script, tmp_path, tiny, timeout):
    """Run one tutorial in a fresh process; fail with its output unless it passed its own asserts, wrote every
    figure in its FIGURES and reached its last line."""
    env = dict(os.environ, MINIDNI_TUTORIAL_OUT=str(tmp_path), MPLBACKEND="Agg")
    for name in ("MINIDNI_BACKEND", "MINIDNI_TINY", "MINIDNI_STANDIN"):  # the defaults, unless tiny is asked for
        env.pop(name, None)
    if tiny:
        env["MINIDNI_TINY"] = "1"
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{script.name} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}"
        f"\n--- stderr ---\n{result.stderr[-3000:]}"
    )
    figures = declared_figures(script, stand_in=tiny) or []  # tiny mode trains on generated stand-ins of MNIST
    missing = [f for f in figures if not (tmp_path / f).is_file() or (tmp_path / f).stat().st_size == 0]
    assert not missing, f"{script.name} left figures unwritten: {missing}"
    if not tiny:  # at its default size a tutorial trains on the real data or stops: no stand-in unless asked for
        stand_ins = [p.name for p in tmp_path.rglob("*") if "stand-in" in p.name or "stand_in" in p.name]
        assert not stand_ins, f"{script.name} used a stand-in at its default size: {stand_ins}"
    assert f"tutorial {script.name[:2]} finished" in result.stdout, f"{script.name} did not reach its end"
