"""The CuPy audit: every array call in the code that can run on a GPU, read without running it, checked against
what the installed CuPy accepts (minidni.cuda.cupy_api).

    python -m minidni.cuda.cupy_audit            # the package; exits 1 if any call would fail under CuPy
    python -m minidni.cuda.cupy_audit -v FILE..  # any files, listing every site it could not verify
    python -m minidni.cuda.cupy_audit --strict   # CI: unverified sites fail too, until a reader reviews them

Each call site falls in one of these groups:

    incompatible   CuPy would raise: a function or method it lacks, or an argument it does not take
                   (`xp.einsum(..., out=dgamma)`, `x.mean(where=m)`, `xp.errstate(...)`, `x.resize(...)`)
    verified       an array-module call (xp.f, array_module(a).f, kernels.xp.f) or an ndarray method call that
                   CuPy accepts as written, per its signature, source or docstring
    reviewed       a site that cannot be verified from CuPy but that a reader checked and marked on its line with
                   `# cupy: <why it is fine>` (the audit prints the reasons)
    unverified     a site that could be fine or not depending on what it is given: np.asarray(x) raises if x is
                   a device array; an in-place update through an index array loses repeated positions on both
                   libraries and picks the survivor at random on CuPy; a method of a name shared with list/dict
    host reads     float(x), int(x), bool(x), .item(), .tolist(), .get(), to_numpy(x): each waits for the device
                   when x lives there; listed so that a step's syncs can be counted (minidni.cuda.cupy_standin
                   counts them at run time)

What this module deliberately is not: type inference. It knows which names hold an array module (the backend's
xp(), array_module(a), an object's .xp) and which expressions are evidently on the host (literals, NumPy results,
to_numpy(...)); everything else it cannot decide is counted as unverified, not guessed. The run-time half of
the check is minidni.cuda.cupy_standin, which executes the GPU path's Python under CuPy's rules.
"""

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from minidni.cuda.cupy_api import CupyApi, CupyMissing, numpy_only_ndarray_methods

PACKAGE = Path(__file__).resolve().parents[1]  # minidni/

# Modules whose code never receives a device array, each with the reason. Everything else in the package is audited.
HOST_ONLY = {
    "__init__.py": "no calls",
    "__main__.py": "runs the command line",
    "cli.py": "parses arguments and calls the modules that compute",
    "data/datasets.py": "the loaders, splits and minibatches: NumPy arrays on the host, uploaded by train.load_data",
    "data/formats.py": "parses published files (idx, pickles, CIFAR-10 batches) into NumPy arrays on the host",
    "data/cache.py": "checksums and the cache directory: bytes on disk, no arrays",
    "data/packages.py": "pip and apt-get downloads; MNIST's idx files rebuilt from a pickle on the host",
    "data/sources.py": "mirrors, downloads and the cache: bytes, no arrays",
    "data/text.py": "corpora and character ids on the host, uploaded by the recurrent trainers",
    "runs/plots.py": "matplotlib, on host copies of metrics",
    "experiments/compare.py": "reads finished runs' metrics.jsonl",
    "experiments/czarnecki/__init__.py": "re-exports the package's names, no calls",
    "experiments/czarnecki/__main__.py": "runs the experiments' command line",
    "experiments/czarnecki/problems.py": "NumPy by design: build_model raises BackendError under any other backend",
    "experiments/czarnecki/training.py": "NumPy by design: trains problems.build_model's models, NumPy only",
    "experiments/czarnecki/report.py": "tables and matplotlib figures from finished runs' JSON",
    "parallel/simulate.py": "a schedule model over measured costs: no network arrays",
    "parallel/speedup.py": "starts runs and reads their metrics",
    "experiments/staleness.py": "starts runs and reads their metrics",
    "experiments/feedforward.py": "starts runs and reads their metrics",
    "experiments/recurrent.py": "starts runs and reads their metrics",
    "experiments/modes.py": "starts runs, reads their metrics and timelines, draws them",
    "runs/threads.py": "BLAS thread counts, no arrays",
    "experiments/torch_reference.py": "PyTorch's CPU step, built from a NumPy network on the host (bench --vs torch)",
    "runs/timeline.py": "records times, not arrays",
    "core/gradcheck.py": "float64 numerical checks on host copies (to_numpy first)",
    "experiments/bench.py": "times the engine on the numpy backend only (the GPU benchmark is cuda/bench.py)",
    "parallel/workers.py": "blocks in processes exchange NumPy arrays; runs in workers use the numpy backend",
    "cuda/__init__.py": "no calls",
    "cuda/emulator.py": "runs kernels on NumPy arrays on the CPU",
    "cuda/nvrtc.py": "the compiler, no arrays",
    "cuda/report.py": "the compiler's resource report, no arrays",
    "cuda/traffic.py": "byte counts, no arrays",
    "cuda/reference.py": "the NumPy references the kernels are tested against, on host arrays",
    "cuda/cupy_api.py": "reads CuPy's API",
    "cuda/cupy_audit.py": "this audit",
    "cuda/cupy_standin.py": "the stand-in itself: NumPy behind CuPy's rules",
}

ARRAY_MODULE_FACTORIES = {"xp", "array_module", "get_array_module"}  # xp() and array_module(a) return the module
HOST_READERS = {"float", "int", "bool", "complex"}
HOST_READ_METHODS = {"item", "tolist"}
NUMPY_CONVERSIONS = {"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray", "copy", "frombuffer"}
NUMPY_SCALARS = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64",
                 "bool_", "dtype", "iinfo", "finfo"}  # fmt: skip
HOST_FUNCTIONS = {"to_numpy", "len", "list", "tuple", "range", "sorted", "str", "repr", "round", "sum", "max", "min",
                  "abs", "enumerate", "zip", "isinstance", "getattr"} | HOST_READERS  # fmt: skip
ARRAY_RESULTS = {"sum", "mean", "max", "min", "argmax", "argmin", "vdot", "dot", "std", "var", "any", "all", "prod",
                 "norm", "astype", "ravel", "reshape"}  # array methods whose result lives where the array does
HOST_RESULTS = {"is_available", "asnumpy", "get_array_module", "show_config"}  # CuPy functions returning host values
BUILTIN_METHODS = {m for t in (list, dict, str, set, tuple, bytes) for m in dir(t) if not m.startswith("_")}
PRAGMA = "# cupy:"


@dataclass(frozen=True)
class Site:
    file: str
    line: int
    group: str  # incompatible | verified | reviewed | unverified | host_read
    call: str  # the call as written (abbreviated)
    note: str = ""  # the problem, the reason it is unverified, or the reviewer's words

    def __str__(self):
        note = f": {self.note}" if self.note else ""
        return f"{self.file}:{self.line}: {self.call}{note}"



# ------------------------------------------------------------------------------------------------------------
# reading one module


class _Scope:
    """What the audit knows about names inside one function (or the module body)."""

    def __init__(self, parent=None):
        self.array_modules = set(parent.array_modules) if parent else set()
        self.host = set(parent.host) if parent else set()
        self.index_arrays = set()  # names bound to the result of an array-module or NumPy call
        self.device_values = set(parent.device_values) if parent else set()  # names bound to device results


class _Auditor(ast.NodeVisitor):
    def __init__(self, api, source, filename):
        self.api, self.filename = api, filename
        self.source, self.lines = source, source.splitlines()
        self.sites = []
        self.numpy_names, self.cupy_names, self.factories = set(), set(), set()
        self.imported = set()  # names of imported modules, classes and functions: never arrays
        self.scope = _Scope()
        self.ndarray_methods = {m for m in api.ndarray_attributes() if not m.startswith("_")}
        self.numpy_only = numpy_only_ndarray_methods(api)

    # -- bookkeeping --------------------------------------------------------------------------------------------

    def _site(self, node, group, note=""):
        text = ast.get_source_segment(self.source, node) or ""
        text = " ".join(text.split())
        call = text if len(text) <= 90 else text[:87] + "..."
        line = self.lines[node.lineno - 1] if node.lineno <= len(self.lines) else ""
        if group == "unverified" and PRAGMA in line:
            group, note = "reviewed", line.split(PRAGMA, 1)[1].strip()
        self.sites.append(Site(self.filename, node.lineno, group, call, note))

    # -- imports and bindings -----------------------------------------------------------------------------------

    def visit_Import(self, node):
        for alias in node.names:
            self.imported.add(alias.asname or alias.name.split(".")[0])
            if alias.name == "numpy":
                self.numpy_names.add(alias.asname or "numpy")
            if alias.name in ("cupy", "cupyx"):
                self.cupy_names.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node):
        for alias in node.names:
            self.imported.add(alias.asname or alias.name)
            if alias.name in ARRAY_MODULE_FACTORIES and (node.module or "").endswith("backend"):
                self.factories.add(alias.asname or alias.name)

    def _is_array_module(self, node):
        """xp(), array_module(a), cupy, <name bound to one>, <anything>.xp"""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.factories:
            return True
        if isinstance(node, ast.Name):
            return node.id in self.scope.array_modules or node.id in self.cupy_names
        return isinstance(node, ast.Attribute) and node.attr == "xp"

    def _is_numpy(self, node):
        return isinstance(node, ast.Name) and node.id in self.numpy_names

    def _module_path(self, func):
        """For `M.a.b(...)` with M an array module or NumPy: (kind, "a.b"); else None."""
        parts, node = [], func
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
            if self._is_array_module(node):
                return "array", ".".join(reversed(parts))
            if self._is_numpy(node):
                return "numpy", ".".join(reversed(parts))
        return None

    def _is_host(self, node):
        """Evidently a host value: a literal, a NumPy or to_numpy result, a name bound to one."""
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, (ast.List, ast.Tuple)):
            return all(self._is_host(e) for e in node.elts)
        if isinstance(node, ast.UnaryOp):
            return self._is_host(node.operand)
        if isinstance(node, ast.BinOp):
            return self._is_host(node.left) and self._is_host(node.right)
        if isinstance(node, ast.Name):
            return node.id in self.scope.host
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in HOST_FUNCTIONS:
                return True
            if isinstance(node.func, ast.Attribute) and self._imported_root(node.func.value):
                return not self._is_array_module(node.func.value)  # json.dumps(...), math.sqrt(...): host
            path = self._module_path(node.func)
            return path is not None and path[0] == "numpy"
        return False

    def _imported_root(self, node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in self.imported and node.id not in self.cupy_names

    def _device_derived(self, node):
        """Evidently computed on the device: an array-module call, a name bound to one's result, an array method
        or operator applied to one, or a reduction of something not evidently on the host (`loss_rows.mean()`).
        What is neither is not guessed; minidni.cuda.cupy_standin counts every read at run time."""
        if isinstance(node, ast.Name):
            return node.id in self.scope.device_values
        if isinstance(node, (ast.BinOp, ast.Compare, ast.BoolOp, ast.UnaryOp)):
            return any(self._device_derived(c) for c in ast.iter_child_nodes(node))
        if isinstance(node, ast.Subscript):
            return self._device_derived(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            path = self._module_path(node.func)
            if path is not None:  # np.f(device array) runs cupy.f: its result stays on the device
                if path[1] in HOST_RESULTS:
                    return False
                return path[0] == "array" or any(self._device_derived(a) for a in node.args)
            receiver = node.func.value
            if node.func.attr in ARRAY_RESULTS and not self._imported_root(receiver):
                return self._device_derived(receiver) or not self._is_host(receiver)
        return False

    def _bind(self, targets, value):
        names = []
        for t in targets:
            if isinstance(t, ast.Name):
                names.append((t.id, value))
            elif isinstance(t, ast.Tuple) and isinstance(value, ast.Tuple) and len(t.elts) == len(value.elts):
                names += [(e.id, v) for e, v in zip(t.elts, value.elts) if isinstance(e, ast.Name)]
        for name, v in names:
            device = self._device_derived(v)  # judged before the name is rebound (x = x.sum() reads the old x)
            for group in (self.scope.array_modules, self.scope.host, self.scope.index_arrays, self.scope.device_values):
                group.discard(name)
            if self._is_array_module(v):
                self.scope.array_modules.add(name)
            elif self._is_host(v):
                self.scope.host.add(name)
            if isinstance(v, ast.Call) and self._module_path(v.func) is not None:
                self.scope.index_arrays.add(name)
            if device:
                self.scope.device_values.add(name)

    def visit_FunctionDef(self, node):
        outer = self.scope
        self.scope = _Scope(outer)
        self.generic_visit(node)
        self.scope = outer

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Assign(self, node):
        self.generic_visit(node)
        self._bind(node.targets, node.value)
        for t in node.targets:
            if isinstance(t, ast.Subscript) and self._fancy(t.slice) and not isinstance(node.value, ast.Constant):
                self._site(node, "unverified", "assignment through an index array: repeated positions get an "
                           "undefined survivor on CuPy")  # fmt: skip

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        if isinstance(node.target, ast.Subscript) and self._fancy(node.target.slice):
            why = "in-place update through an index array: repeated positions are not accumulated (use "
            self._site(node, "unverified", why + "cupyx.scatter_add / np.add.at) and the survivor is undefined on CuPy")

    def _fancy(self, index):
        """An index holding an array (an array-module or NumPy call, or a name bound to one's result)."""
        parts = index.elts if isinstance(index, ast.Tuple) else [index]
        for p in parts:
            if isinstance(p, ast.Call) and self._module_path(p.func) is not None:
                return True
            if isinstance(p, ast.Name) and p.id in self.scope.index_arrays:
                return True
        return False

    def visit_Attribute(self, node):
        """xp.float_, xp.newaxis, xp.linalg: an attribute of the array module that is read, not called."""
        self.generic_visit(node)
        if isinstance(getattr(node, "parent_call", None), ast.Call):
            return
        path = self._module_path(node)
        if path is not None and path[0] == "array" and self.api.is_array_api(path[1]) and not self.api.has(path[1]):
            self._site(node, "incompatible", f"cupy.{path[1]} does not exist in CuPy {self.api.version}")

    # -- calls --------------------------------------------------------------------------------------------------

    def visit_Call(self, node):
        node.func.parent_call = node  # its attribute is checked as a call, below, not as a read
        self.generic_visit(node)
        n_args = sum(not isinstance(a, ast.Starred) for a in node.args)
        star_args = any(isinstance(a, ast.Starred) for a in node.args)
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        star_kwargs = any(k.arg is None for k in node.keywords)
        func = node.func

        if isinstance(func, ast.Name):
            if func.id in HOST_READERS and node.args and self._device_derived(node.args[0]):
                self._site(node, "host_read", f"{func.id}() of a value computed on the device")
            elif func.id == "to_numpy":
                self._site(node, "host_read", "to_numpy: a device-to-host copy")
            return
        if not isinstance(func, ast.Attribute):
            return

        path = self._module_path(func)
        if path is not None and path[0] == "array" and not self.api.is_array_api(path[1]):
            return  # cupy.cuda.*: the GPU's runtime, called only where one exists
        if path is not None and path[0] == "array":
            verdict = self.api.check(path[1], n_args, keywords, star_args, star_kwargs)
            group = {True: "verified", False: "incompatible", None: "unverified"}[verdict.ok]
            self._site(node, group, verdict.problem)
            if path[1] == "asnumpy":
                self._site(node, "host_read", "asnumpy: a device-to-host copy")
            return
        if path is not None:  # numpy
            self._numpy_call(node, path[1], n_args, keywords, star_args, star_kwargs)
            return
        if self._imported_root(func.value) or isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            return
        if isinstance(func.value, ast.Constant):  # "".join(...)
            return
        self._method_call(node, func.attr, n_args, keywords, star_args, star_kwargs)

    def _numpy_call(self, node, name, n_args, keywords, star_args, star_kwargs):
        head = name.split(".")[0]
        if head in ("random", "testing") or name in NUMPY_SCALARS:
            if name in NUMPY_SCALARS and node.args and self._device_derived(node.args[0]):
                self._site(node, "host_read", f"np.{name}() of a value computed on the device")
            return  # host RNGs and dtypes
        args = list(node.args) + [k.value for k in node.keywords]
        if all(self._is_host(a) for a in args):
            return  # evidently host work: not an array-API site
        if name in NUMPY_CONVERSIONS:
            self._site(node, "unverified", f"np.{name} raises TypeError if given a device array (use to_numpy)")
            return
        verdict = self.api.check(name, n_args, keywords, star_args, star_kwargs)
        if verdict.ok:
            self._site(node, "verified", f"np.{name} on a device array runs cupy.{name}")
        else:
            self._site(node, "unverified", f"if given a device array: {verdict.problem}")

    def _method_call(self, node, name, n_args, keywords, star_args, star_kwargs):
        if name in self.numpy_only and name not in BUILTIN_METHODS:
            self._site(node, "incompatible", f"cupy.ndarray has no method {name!r} (numpy.ndarray has)")
            return
        if name not in self.ndarray_methods or not callable(getattr(self.api.cupy.ndarray, name)):
            return  # not an array method (or a property such as .flat): a call of minidni's own objects
        if name in HOST_READ_METHODS or (name == "get" and not node.args and not keywords):
            if not self._is_host(node.func.value):
                self._site(node, "host_read", f".{name}(): a device-to-host read")
            return
        if name in BUILTIN_METHODS and name not in ("copy",):
            return  # get, index, sort, ...: most often a dict's, list's or str's
        verdict = self.api.check(f"ndarray.{name}", n_args, keywords, star_args, star_kwargs)
        group = {True: "verified", False: "incompatible", None: "unverified"}[verdict.ok]
        self._site(node, group, verdict.problem)


# ------------------------------------------------------------------------------------------------------------
# the package


def audit_source(source, filename, api=None):
    """The sites of one module's source text."""
    api = CupyApi() if api is None else api
    auditor = _Auditor(api, source, filename)
    auditor.visit(ast.parse(source, filename))
    return auditor.sites


def device_modules(package=PACKAGE):
    """The package's modules that can receive device arrays: every .py file not in HOST_ONLY."""
    files = sorted(package.rglob("*.py"))
    return [f for f in files if f.relative_to(package).as_posix() not in HOST_ONLY]


def audit_files(files, api=None):
    api = CupyApi() if api is None else api
    sites = []
    for f in files:
        f = Path(f)
        name = f.relative_to(PACKAGE.parent).as_posix() if f.is_relative_to(PACKAGE.parent) else str(f)
        sites += audit_source(f.read_text(encoding="utf-8"), name, api)
    return sites


def summary(sites, api):
    counts = Counter(s.group for s in sites)
    array_sites = sum(counts[g] for g in ("incompatible", "verified", "reviewed", "unverified"))
    return (
        f"CuPy audit against CuPy {api.version}: {array_sites} array call sites - {counts['verified']} verified, "
        f"{counts['incompatible']} incompatible, {counts['reviewed']} reviewed by hand, {counts['unverified']} could "
        f"not be verified; {counts['host_read']} host reads"
    )


def report(sites, api, verbose=False, out=print):
    """Print the summary, every incompatible and unverified site, and with verbose the reviewed sites (with their
    reviewers' reasons) and the host reads too."""
    out(summary(sites, api))
    shown = ("incompatible", "unverified", "reviewed", "host_read") if verbose else ("incompatible", "unverified")
    for group in shown:
        chosen = [s for s in sites if s.group == group]
        if chosen:
            out(f"{group} ({len(chosen)}):")
            for s in chosen:
                out(f"  {s}")
    return sum(s.group == "incompatible" for s in sites)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minidni.cuda.cupy_audit", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", help="files to audit (default: minidni's modules that can run on a GPU)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list reviewed, unverified and host-read sites")
    parser.add_argument("--strict", action="store_true", help="fail on unverified sites too (CI: each must be "
                        "verified or reviewed by hand with a `# cupy: <why>` comment)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        api = CupyApi()
    except CupyMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    files = [Path(f).resolve() for f in args.files] or device_modules()
    sites = audit_files(files, api)
    incompatible = report(sites, api, args.verbose)
    unverified = sum(s.group == "unverified" for s in sites)
    return 1 if incompatible or (args.strict and unverified) else 0


if __name__ == "__main__":
    sys.exit(main())
