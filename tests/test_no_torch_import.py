"""PyTorch stays optional: only minidni.experiments.torch_reference imports torch, and only inside its functions;
the library imports torch_reference only inside functions; no test imports torch. minidni installs, imports and
passes its tests without torch, which only `python -m minidni bench` uses (the `bench` extra).

The checks read the source (the AST), so they hold whether or not torch is installed here: every `import torch`,
`from torch... import`, importlib.import_module / __import__ / pytest.importorskip of "torch...", relative imports
resolved. "Inside a function" means inside a def or lambda; a class body or an `if` at module level is import time.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE, TESTS = ROOT / "minidni", ROOT / "tests"
REFERENCE = "minidni.experiments.torch_reference"  # the one module allowed to import torch, lazily
DYNAMIC = ("import_module", "__import__", "importorskip")  # calls that import the module named by their first argument


def module_name(path, root):
    """minidni/experiments/bench.py -> minidni.experiments.bench (root: the folder that holds the package)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree, package):
    """Every import in a module of `package` (its dotted name): (line, imported module names, inside a function?).
    `from a import b` names both a and a.b (b may be a submodule); a relative import is resolved against package."""
    package, found = package.split("."), []

    def visit(node, in_function):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [a.name for a in node.names], in_function))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x: level 1 is the package itself, each further dot one package up
                base = ".".join(package[: len(package) - node.level + 1] + [base]).strip(".")
            found.append((node.lineno, [base] + [f"{base}.{a.name}" for a in node.names], in_function))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in DYNAMIC and isinstance(node.args[0].value, str):
                found.append((node.lineno, [node.args[0].value], in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def is_torch(name):
    return name == "torch" or name.startswith("torch.")


def is_reference(name):
    return name == REFERENCE or name.startswith(REFERENCE + ".")


def offending_imports(root, tests):
    """'file:line: what' for each import that breaks the rules above, in the package under `root` (a folder holding
    the package) and the test files in `tests`."""
    found = []
    files = [(p, module_name(p, root)) for p in sorted(root.glob("minidni/**/*.py"))]
    files += [(p, "tests." + p.stem) for p in sorted(tests.glob("*.py"))]
    for path, here in files:
        rel = path.relative_to(root).as_posix()
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]  # what `from . import` means
        for line, names, in_function in imports(ast.parse(path.read_text(encoding="utf-8")), package):
            if any(map(is_torch, names)):
                if here != REFERENCE:
                    found.append(f"{rel}:{line}: imports torch (only {REFERENCE} may, inside its functions)")
                elif not in_function:
                    found.append(f"{rel}:{line}: imports torch at import time (import it inside a function)")
            if any(map(is_reference, names)) and here.startswith("minidni.") and not in_function:
                found.append(f"{rel}:{line}: imports {REFERENCE} at import time (import it inside a function)")
    return found


def test_only_torch_reference_imports_torch_and_only_inside_functions():
    found = offending_imports(ROOT, TESTS)
    assert not found, "torch must stay optional:\n" + "\n".join(found)


def test_the_check_finds_each_kind_of_torch_import(tmp_path):
    """The check must be able to fail: a planted package and test folder with one offence of each kind, beside
    imports that are allowed (inside functions)."""
    pkg, tests = tmp_path / "minidni", tmp_path / "tests"
    (pkg / "experiments").mkdir(parents=True)
    tests.mkdir()
    planted = {
        pkg / "__init__.py": "",
        pkg / "cli.py": "def main():\n    from minidni.experiments.torch_reference import f\n    return f\n",
        pkg / "experiments" / "__init__.py": "from . import torch_reference\n",
        pkg / "experiments" / "bench.py": "import importlib\nfrom ..experiments.torch_reference import f\n\n\n"
        "class A:\n    import torch.nn\n\n\ndef g():\n    from .torch_reference import f\n"
        "    return importlib.import_module('torch'), f\n",
        pkg / "experiments" / "torch_reference.py": "import numpy\nfrom torch import nn\n\n\n"
        "def f():\n    import torch\n    return torch\n",
        tests / "test_x.py": "import pytest\n\n\ndef test_x():\n    pytest.importorskip('torch')\n",
    }
    for path, text in planted.items():
        path.write_text(text)
    only = "imports torch (only minidni.experiments.torch_reference may, inside its functions)"
    at_import_time = "imports minidni.experiments.torch_reference at import time (import it inside a function)"
    assert offending_imports(tmp_path, tests) == [
        f"minidni/experiments/__init__.py:1: {at_import_time}",
        f"minidni/experiments/bench.py:2: {at_import_time}",
        f"minidni/experiments/bench.py:6: {only}",
        f"minidni/experiments/bench.py:11: {only}",
        "minidni/experiments/torch_reference.py:2: imports torch at import time (import it inside a function)",
        f"tests/test_x.py:5: {only}",
    ]


def test_without_torch_the_reference_says_how_to_install_it(monkeypatch):
    """Importing torch_reference needs no torch; using it without torch names the extra that brings it."""
    from minidni.experiments import torch_reference

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError, installed or not
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
        torch_reference.torch_step("fcn", "bprop")
