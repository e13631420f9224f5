"""What CuPy really accepts: which functions and array methods exist, and which arguments each one takes.

NumPy code that runs on the CPU can still crash on a GPU at its first batch, because CuPy implements NumPy's API
only in part: `cupy.einsum` takes no `out=`, CuPy's ufuncs take no `where=`, `cupy.ascontiguousarray` refuses a
NumPy array. Python signatures cannot tell most of this (`cupy.einsum` is `(*operands, **kwargs)`; ufuncs and the
methods of `cupy.ndarray` are compiled Cython and have no Python signature), so this module reads it where CuPy
writes it down, from the installed package, with no GPU:

    1. a Python function's own signature, and for one that takes **kwargs the names its source pops from them
       before raising "Did not understand the following kwargs" (how cupy.einsum rejects `out`);
    2. a compiled function's, ufunc's or method's signature line, which Cython writes as the first line of its
       docstring (`add(x1, x2, /, out=None, \\*, casting='same_kind', dtype=None)`; ufunc.__call__ in
       cupy/_core/_kernel.pyx pops exactly out, dtype and casting and raises on anything else);
    3. the "... options are not supported" notes of the docstrings (einsum: ``out``, ``order``, ``casting``).

    api = CupyApi()                                   # reads the installed CuPy (never touches a device)
    api.check("einsum", n_args=3, keywords=["out"])   # -> Verdict(ok=False, problem="... takes no keyword 'out'")

What this module deliberately is not: a judge of values, dtypes or devices (minidni.cuda.cupy_standin runs code
and sees those), or a list written by hand that could drift from the installed CuPy.
"""

import ast
import inspect
import re
from dataclasses import dataclass

import numpy as np

# Functions that take host data (NumPy arrays, lists) and upload it. Every other CuPy function and operator
# raises TypeError on a NumPy array (ufuncs: "Unsupported type <class 'numpy.ndarray'>", cupy/_core/_scalar.pyx;
# ascontiguousarray: a typed `_ndarray_base a` argument, cupy/_core/core.pyx), so host and device arrays never mix.
HOST_INPUT_FUNCTIONS = ("array", "asarray", "asanyarray", "asnumpy", "get_array_module")


class CupyMissing(RuntimeError):
    """CuPy is not installed, so what it accepts cannot be read."""


def import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise CupyMissing(
            "CuPy is not installed, so its API cannot be read: pip install cupy-cuda13x (no GPU needed)"
        ) from e
    return cupy


@dataclass(frozen=True)
class Verdict:
    ok: object  # True (CuPy accepts the call), False (it would raise) or None (cannot be verified from CuPy)
    problem: str = ""  # why not, or why it cannot be verified
    source: str = ""  # where the knowledge came from: "signature", "docstring", "source", "docstring note"


_MISSING = object()


class CupyApi:
    """The installed CuPy's callables, looked up by dotted path ("einsum", "linalg.norm", "ndarray.sum", "add.at")."""

    def __init__(self, cupy=None):
        self.cupy = import_cupy() if cupy is None else cupy
        self.version = self.cupy.__version__
        self._signatures = {}

    # -- lookup -------------------------------------------------------------------------------------------------

    def _lookup(self, path):
        obj = self.cupy
        for part in path.split("."):
            obj = getattr(obj, part, _MISSING)
            if obj is _MISSING:
                break
        return obj

    def resolve(self, path):
        """The CuPy object at `path`, or None where CuPy has none (or where it is None: cupy.newaxis)."""
        obj = self._lookup(path)
        return None if obj is _MISSING else obj

    @staticmethod
    def is_array_api(path):
        """False for CuPy's CUDA layer (cupy.cuda.*: devices, streams, events, compilers), which has no NumPy
        counterpart to be confused with and is used only where a GPU is known to be present."""
        return not path.startswith("cuda.")

    def has(self, path):
        return self._lookup(path) is not _MISSING

    def ndarray_attributes(self):
        return set(dir(self.cupy.ndarray))

    # -- what a callable accepts ---------------------------------------------------------------------------------

    def signature(self, path):
        """(inspect.Signature or None, where it came from, accepted **kwargs names or None).

        The third item is the closed set of names a **kwargs parameter accepts, read from the source, or None
        where the signature has no **kwargs; ("?",) marks a **kwargs whose accepted names cannot be read."""
        if path not in self._signatures:
            self._signatures[path] = self._read_signature(path)
        return self._signatures[path]

    def _read_signature(self, path):
        obj = self.resolve(path)
        if obj is None:
            return None, "", None
        sig, where = None, ""
        if not isinstance(obj, self.cupy.ufunc):
            try:
                sig, where = inspect.signature(obj), "signature"
            except (TypeError, ValueError):  # compiled: no Python signature
                pass
        if sig is None:
            sig = signature_from_docstring(getattr(obj, "__doc__", None))
            where = "docstring"
        if sig is None:
            return None, "", None
        sig = _without_self(sig)
        extra = None
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            extra = popped_keywords(obj)
            where += " + source" if extra != ("?",) else ""
        unsupported = unsupported_in_notes(getattr(obj, "__doc__", None))
        if unsupported:
            sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in unsupported])
            if extra not in (None, ("?",)):
                extra = tuple(k for k in extra if k not in unsupported)
            where += " + docstring note"
        return sig, where, extra

    def check(self, path, n_args=0, keywords=(), star_args=False, star_kwargs=False):
        """Would CuPy accept `path(<n_args positional>, <keywords>=...)`? Returns a Verdict."""
        if not self.has(path):
            return Verdict(False, f"cupy.{path} does not exist in CuPy {self.version}", "lookup")
        sig, where, extra = self.signature(path)
        if sig is None:
            return Verdict(None, f"cupy.{path}: CuPy states no signature for it", "")
        params = sig.parameters
        named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        for k in keywords:
            if k in named:
                continue
            if extra == ("?",):
                return Verdict(None, f"cupy.{path} passes **kwargs on; whether it takes {k!r} is not stated", where)
            if extra is not None and k in extra:
                continue
            accepted = sorted(named | set(extra or ()))
            return Verdict(False, f"cupy.{path} takes no keyword {k!r} (it takes {accepted})", where)
        if star_args or star_kwargs:
            return Verdict(True, "", where)  # keywords checked; how many arguments *args holds is not known
        fake = sig.replace(parameters=[p for p in params.values() if p.kind is not p.VAR_KEYWORD])
        try:
            fake.bind(*range(n_args), **{k: None for k in keywords if k in named})
        except TypeError as e:
            return Verdict(False, f"cupy.{path}{sig}: {e}", where)
        return Verdict(True, "", where)


def _without_self(sig):
    params = list(sig.parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return sig.replace(parameters=params)


# -- reading what CuPy writes down ------------------------------------------------------------------------------

_DOC_SIGNATURE = re.compile(r"^\s*(?:[\w.]+\.)?\w+\((.*)\)\s*(?:->.*)?$")
_CYTHON_TYPED = re.compile(r"^(?:[A-Za-z_][\w.]*\s+)+(\*{0,2}[A-Za-z_]\w*)$")


def signature_from_docstring(doc):
    """The signature on a docstring's first line, as Cython (embedsignature) and CuPy's ufuncs write it:
    `_ndarray_base.sum(self, axis=None, dtype=None, out=None, keepdims=False) -> _ndarray_base`,
    `add(x1, x2, /, out=None, \\*, casting='same_kind', dtype=None)`. None if the first line is not one."""
    if not doc:
        return None
    m = _DOC_SIGNATURE.match(doc.strip().splitlines()[0].replace("\\*", "*"))
    if not m:
        return None
    params = []
    for part in _split_params(m[1]):
        name, eq, default = part.partition("=")
        name = name.strip()
        typed = _CYTHON_TYPED.match(name)  # Cython's `int axis=-1`, `_ndarray_base b`: drop the C type
        if typed:
            name = typed[1]
        params.append(name + (f"={default.strip()}" if eq else ""))
    try:
        tree = ast.parse(f"def f({', '.join(params)}): pass")
    except SyntaxError:
        return None
    return _signature_of_ast(tree.body[0].args)


def _split_params(text):
    """Split a parameter list at top-level commas (defaults may hold brackets or strings)."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _signature_of_ast(args):
    P = inspect.Parameter
    params = []
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    for i, a in enumerate(positional):
        kind = P.POSITIONAL_ONLY if i < len(args.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        params.append(P(a.arg, kind, default=None if i >= first_default else P.empty))
    if args.vararg:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params.append(P(a.arg, P.KEYWORD_ONLY, default=P.empty if d is None else None))
    if args.kwarg:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD))
    return inspect.Signature(params)


_POPPED = re.compile(r"""kwargs\.(?:pop|get)\(\s*['"](\w+)['"]""")
_REJECTS = re.compile(r"if\s+(?:len\()?kwargs\)?\s*:\s*\n\s*raise\s+TypeError")


def popped_keywords(obj):
    """The keyword names a **kwargs function accepts, read from its source: the names it pops from kwargs before
    it raises TypeError on what is left (cupy.einsum: dtype, optimize). ("?",) where the source is not available
    or passes kwargs on to something else."""
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return ("?",)
    source = re.sub(r"#[^\n]*", "", source)  # einsum keeps `# casting = kwargs.pop('casting', ...)` commented out
    if not _REJECTS.search(source):
        return ("?",)
    return tuple(dict.fromkeys(_POPPED.findall(source)))


_NOTE = re.compile(r"[^.]*\bnot supported\b[^.]*", re.IGNORECASE)
_NOTE_SUBJECT = re.compile(r"\b(options?|arguments?|parameters?|keywords?)\b", re.IGNORECASE)


def unsupported_in_notes(doc):
    """Argument names a docstring says are not supported: ``out`` in "``out``, ``order``, and ``casting`` options
    are not supported" (cupy.einsum). Only sentences about options, arguments, parameters or keywords count, so that
    "casting, ``where``, and broadcasting is not supported" across devices (cupy.copyto) takes nothing away."""
    names = set()
    for sentence in _NOTE.findall(doc or ""):
        if _NOTE_SUBJECT.search(sentence):
            names.update(re.findall(r"``(\w+)``", sentence))
    return names


def numpy_only_ndarray_methods(api):
    """Methods numpy.ndarray has and cupy.ndarray lacks (e.g. getfield, resize, setflags)."""
    return {n for n in dir(np.ndarray) if not n.startswith("_")} - api.ndarray_attributes()
