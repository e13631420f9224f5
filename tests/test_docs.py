"""The documentation site (docs/, built by Sphinx): nothing in the package or the folder is left out of it.

The fast tests need no Sphinx: every module of the package gets an API page from docs/conf.py's generator, every
docs/*.md page is in the table of contents, the map (docs/map.md) names every module and links every tutorial, every
module imports without CuPy (so autodoc needs no GPU), and the docstring hook keeps a docstring's text exactly.
The last test runs the real build with warnings as errors; it runs only where the docs extra is installed
(`pip install -e '.[docs]'`) and takes about half a minute.
"""

import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minidni

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOT_PAGES = {"index.md", "README.md"}  # the site's root, and the folder's index for GitHub (excluded from the site)


def load_conf():
    """docs/conf.py as a module (it imports without Sphinx)."""
    spec = importlib.util.spec_from_file_location("minidni_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def package_modules():
    """Every module of the installed package, found by pkgutil (not by the generator's own file walk)."""
    names = {"minidni"} | {m.name for m in pkgutil.walk_packages(minidni.__path__, "minidni.")}
    if importlib.util.find_spec("minidni.kernels") is not None:  # the kernel sources' package (setup.py)
        names.add("minidni.kernels")
    return sorted(names)


def toctree_entries(page):
    """The entries of every {toctree} block in a MyST page (options and blank lines skipped)."""
    entries = []
    for block in re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL):
        entries += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")]
    return entries


def test_every_module_has_an_api_page(tmp_path):
    conf = load_conf()
    written = conf.write_api_pages(tmp_path)
    missing = [name for name in package_modules() if f"{name}.md" not in written]
    assert not missing, f"modules with no API page (docs/conf.py api_modules does not find them): {missing}"
    for name in package_modules():
        page = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
        if name in conf.NOT_IMPORTED:
            assert "```text" in page, f"{name}: its page should show its docstring"
        else:
            assert f".. automodule:: {name}\n" in page, f"{name}: its API page has no automodule directive"


def test_generated_pages_are_in_the_api_toctree(tmp_path):
    assert toctree_entries(DOCS / "api" / "index.md") == ["minidni*"], "docs/api/index.md should glob minidni*"
    assert ":glob:" in (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    assert all(name.startswith("minidni") for name in load_conf().write_api_pages(tmp_path))


def test_stale_generated_pages_are_removed_and_hand_written_ones_kept(tmp_path):
    conf = load_conf()
    (tmp_path / "minidni.gone.md").write_text(conf.GENERATED + "\n# minidni.gone\n", encoding="utf-8")
    (tmp_path / "index.md").write_text("# API reference\n", encoding="utf-8")
    conf.write_api_pages(tmp_path)
    assert not (tmp_path / "minidni.gone.md").exists()
    assert (tmp_path / "index.md").exists()


def test_every_page_is_in_the_toctree():
    listed = set(toctree_entries(DOCS / "index.md"))
    pages = {p.stem for p in DOCS.glob("*.md") if p.name not in NOT_PAGES}
    assert not pages - listed, f"docs pages missing from the toctree in docs/index.md: {sorted(pages - listed)}"
    missing_files = {e for e in listed if not (DOCS / f"{e}.md").exists()}
    assert not missing_files, f"docs/index.md lists pages that do not exist: {sorted(missing_files)}"
    assert "api/index" in listed, "the API reference (docs/api/index.md) is not in docs/index.md's toctree"
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    unlisted = sorted(e for e in listed if f"]({e}.md)" not in text)
    assert not unlisted, f"docs/index.md's toctree has pages its lists do not link (add a line on each): {unlisted}"


def source_link(name):
    """The link from docs/ to module `name`'s source file: ../minidni/core/backend.py, ../minidni/dni/__init__.py."""
    path = load_conf()._module_path(name)
    return "../" + path.relative_to(ROOT).as_posix()


def test_map_names_every_module_and_links_every_tutorial():
    text = (DOCS / "map.md").read_text(encoding="utf-8")
    modules = [name for name in package_modules() if f"[`{name}`]({source_link(name)})" not in text]
    assert not modules, f"docs/map.md has no line for these modules (add one, linking its source): {modules}"
    assert "](api/" not in text, "docs/map.md links an API page, which exists only in the built site, not on GitHub"
    tutorials = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
    unlinked = [p.name for p in tutorials if f"(../tutorials/{p.name})" not in text]
    assert not unlinked, f"docs/map.md's reading order does not link these tutorials: {unlinked}"


def test_every_module_imports_without_cupy():
    """autodoc imports every module; none may need CuPy or a GPU to be imported (cupy is made unimportable)."""
    conf = load_conf()
    names = [n for n in package_modules() if n not in conf.NOT_IMPORTED]
    code = (
        "import importlib, sys\n"
        "sys.modules['cupy'] = sys.modules['cupyx'] = None  # 'import cupy' now raises ImportError\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env.pop("MINIDNI_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, f"a module needs CuPy to be imported:\n{result.stderr[-3000:]}"


def test_docstrings_become_literal_blocks_with_their_text_unchanged():
    conf = load_conf()
    doc = ["h_i = f_i(h_{i-1})   code: h", "", "    *bold?* `x` :role: |sub| [1]_ __init__", "delta_i = dL/dh_i"]
    lines = list(doc)
    conf.docstring_as_literal(None, "function", "f", None, {}, lines)
    assert lines[:2] == [".. code-block:: text", ""]
    body = lines[2:-1]
    assert [line[3:] if line else "" for line in body] == doc, "the docstring's text changed"
    assert all(line.startswith("   ") or not line for line in body), "every line must stay inside the block"
    empty = ["", "  "]
    conf.docstring_as_literal(None, "function", "f", None, {}, empty)
    assert empty == ["", "  "], "an empty docstring stays empty (no empty literal block)"


def test_sphinx_build_passes_with_warnings_as_errors(tmp_path):
    """The real build, as CI runs it (.ci/run): every warning is an error. About half a minute."""
    for name in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(name, reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, f"the docs build failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert (out / "index.html").exists()
    missing = [name for name in package_modules() if not (out / "api" / f"{name}.html").exists()]
    assert not missing, f"the built site has no API page for {missing}"


def _python_imports(text):
    """The minidni import statements of a Markdown page's code (and of its prose's `code`): one per line, with
    backslash continuations joined and comments dropped."""
    text = re.sub(r"\s*\\\n\s*", " ", text)
    found = []
    for line in text.splitlines():
        line = line.strip().strip("`")
        m = re.match(r"(from minidni[\w.]* import [\w, ]+|import minidni[\w.]*(?: as \w+)?)", line)
        if m:
            found.append(m.group(1).rstrip(", "))
    return found


def test_every_import_the_pages_show_works():
    """A page that shows `from minidni.x import y` must show a path that exists: the README, docs/*.md and the
    tutorials' README follow the package's layout (a moved module or name fails here, not in a reader's hands)."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "tutorials" / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        if page.name == "CHANGELOG.md":
            continue  # it names the old paths on purpose
        for statement in _python_imports(page.read_text(encoding="utf-8")):
            try:
                exec(statement, {})
            except ImportError as err:
                broken.append(f"{page.relative_to(ROOT)}: {statement}  ({err})")
    assert not broken, "imports shown in the docs that do not work:\n" + "\n".join(broken)


def test_the_import_check_reads_continued_lines_and_can_fail():
    page = "```python\nfrom minidni.dni.network import build_network, \\\n    no_such_name  # x\n```\n"
    (statement,) = _python_imports(page)
    assert statement == "from minidni.dni.network import build_network, no_such_name"
    with pytest.raises(ImportError):
        exec(statement, {})
