"""The package's architecture, checked: the layers and no cycles (import-linter's contracts in .importlinter), no
module using another module's private names (import-linter cannot say this, so the AST does), and the textbook's
line budget. docs/map.md draws the layers and gives the per-module counts."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidni"
# The textbook: the core and the DNI method's own modules, read in one sitting (docs/map.md). feedback.py sits in
# minidni/dni but is Czarnecki et al.'s comparison of other error signals, read after the textbook.
TEXTBOOK = sorted((PACKAGE / "core").glob("*.py")) + sorted(
    p for p in (PACKAGE / "dni").glob("*.py") if p.name != "feedback.py"
)
TEXTBOOK_BUDGET = 2300


def module_name(path, root=PACKAGE):
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(root):
    """Every place a module of the package under `root` uses a private name (_x) of another of its modules:
    `from pkg.other import _x`, `other._x` on an imported module, or `obj._x` where _x is defined in another
    module and not in this one (a method called on an object built elsewhere). Returns 'file:line: use' lines."""
    files = sorted(p for p in root.rglob("*.py"))
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in files}

    def defined(tree):
        names = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(n.name)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                names.add(n.id)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                names.add(n.attr)
            elif isinstance(n, ast.arg):
                names.add(n.arg)
        return {x for x in names if x.startswith("_") and not x.startswith("__")}

    own = {p: defined(t) for p, t in trees.items()}
    anywhere = set().union(*own.values()) if own else set()
    found = []
    for path, tree in trees.items():
        me, modules = module_name(path, root), set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == root.name:
                for a in n.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and n.module != me:
                        found.append(f"{path.name}:{n.lineno}: from {n.module} import {a.name}")
                    modules.add(a.asname or a.name)
        for n in ast.walk(tree):
            if not (isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")):
                continue
            on_module = isinstance(n.value, ast.Name) and n.value.id in modules
            elsewhere = n.attr in anywhere and n.attr not in own[path]
            if on_module or elsewhere:
                found.append(f"{path.name}:{n.lineno}: {ast.unparse(n)}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = private_uses(PACKAGE)
    assert not found, "private names used across modules (make them public, or keep the use inside):\n" + "\n".join(
        found
    )


def test_the_private_name_check_finds_each_kind_of_use(tmp_path):
    """The check above must be able to fail: a planted package with one use of each kind."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper():\n    return 1\n\n\nclass Net:\n    def _loss(self):\n        return 0\n")
    (pkg / "b.py").write_text(
        "from pkg.a import _helper\nfrom pkg import a\n\n\n"
        "def f(net):\n    return a._helper(), net._loss(), _helper()\n"
    )
    found = private_uses(pkg)
    assert any("import _helper" in f for f in found)
    assert any("a._helper" in f for f in found)
    assert any("net._loss" in f for f in found)
    assert not any(f.startswith("a.py") for f in found)  # a module's own private names are its business


def test_the_layer_and_cycle_contracts_are_kept(capsys):
    """import-linter with .importlinter: each layer imports only the ones below it, and no package's modules import
    each other in a cycle, deferred imports (inside functions) included. The same as `lint-imports` in CI."""
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_the_textbook_keeps_its_line_budget():
    counts = {p.relative_to(PACKAGE).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in TEXTBOOK}
    total = sum(counts.values())
    table = "\n".join(f"  {n:24} {c:5d}" for n, c in counts.items())
    assert total <= TEXTBOOK_BUDGET, f"the textbook is {total} lines, over its budget of {TEXTBOOK_BUDGET}:\n{table}"


def test_the_maps_reading_path_is_the_textbook_with_its_true_line_counts():
    """docs/map.md states each textbook module's line count and their sum: the numbers must be today's."""
    import re

    text = (ROOT / "docs" / "map.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| \d+ \| \[`[^`]+`\]\(\.\./(minidni/[\w/]+\.py)\) \| (\d+) \|", text, flags=re.M)
    stated = {path: int(n) for path, n in rows}
    actual = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in TEXTBOOK}
    assert stated == actual, f"docs/map.md's reading path says {stated}, the files have {actual}"
    (total,) = re.findall(r"^\| \| \*\*the textbook\*\* \| \*\*(\d+)\*\* \|", text, flags=re.M)
    assert int(total) == sum(actual.values())


def folders_without_init(root):
    """Folders under `root` that hold Python files but no __init__.py: namespace packages, which setup.py's
    find_packages and import-linter do not see (a clean clone once had minidni/runs as one: .gitignore hid it)."""
    return sorted(
        d.relative_to(root).as_posix()
        for d in [root, *(p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__")]
        if any(d.glob("*.py")) and not (d / "__init__.py").exists()
    )


def test_every_folder_of_python_files_is_a_package(tmp_path):
    assert folders_without_init(PACKAGE) == []
    (tmp_path / "pkg" / "sub").mkdir(parents=True)  # the check itself, on a planted namespace package
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "mod.py").write_text("")
    assert folders_without_init(tmp_path / "pkg") == ["sub"]


def test_no_package_file_is_hidden_from_git():
    """A file of the package that .gitignore hides would be missing from every clone and every wheel built there."""
    import subprocess

    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True).stdout
    assert not ignored.strip(), f"package files that .gitignore hides: {ignored.split()}"
