"""CI: the installed wheel holds the whole package. Run by .ci/run with the fresh venv's Python, from outside the
checkout (so that `import minidni` finds the installed copy):

    python check_wheel.py CHECKOUT

Every module and subpackage of the checkout's minidni/ must import from the installed package, every kernel
source (.cu, .cuh) of kernels/ must be installed as minidni.kernels, and so must the CPU emulator's runtime
(minidni/cuda/emu). A subpackage that setup.py fails to list, or package data it fails to ship, fails here."""

import importlib
import pathlib
import sys
from importlib import resources

checkout = pathlib.Path(sys.argv[1]).resolve()
try:
    import minidni
except ImportError as err:  # the top imports every layer: a missing subpackage shows here first
    sys.exit(f"CI: the installed wheel cannot import minidni: {err}")

installed = pathlib.Path(minidni.__file__).resolve().parent
if installed.is_relative_to(checkout):
    sys.exit(f"CI: minidni was imported from the checkout ({installed}), not from the installed wheel")

wanted = []
for path in sorted((checkout / "minidni").rglob("*.py")):
    parts = path.relative_to(checkout).with_suffix("").parts
    if parts[-1] == "__main__":
        continue  # importing it runs the command line; `python -m minidni --help` is checked by .ci/run
    wanted.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
missing = []
for name in wanted:
    try:
        importlib.import_module(name)
    except ImportError as err:
        missing.append(f"{name}: {err}")
if missing:
    sys.exit("CI: modules of the checkout that the installed wheel lacks:\n  " + "\n  ".join(missing))

shipped = {p.name for p in resources.files("minidni.kernels").iterdir()}
sources = {p.name for p in (checkout / "kernels").iterdir() if p.suffix in (".cu", ".cuh")}
emu = {p.name for p in (checkout / "minidni" / "cuda" / "emu").iterdir() if p.suffix in (".h", ".cpp")}
emu_dir = installed / "cuda" / "emu"
shipped_emu = {p.name for p in emu_dir.iterdir()} if emu_dir.is_dir() else set()
lacking = sorted(sources - shipped) + sorted(f"cuda/emu/{n}" for n in emu - shipped_emu)
if lacking:
    sys.exit(f"CI: files the installed wheel lacks: {lacking}")
print(f"CI: the wheel's minidni {minidni.__version__}: {len(wanted)} modules import, {len(sources)} kernel sources "
      f"and {len(emu)} emulator files installed, from {installed}")  # fmt: skip
