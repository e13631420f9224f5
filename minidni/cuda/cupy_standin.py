"""A stand-in for CuPy on a machine without a GPU: NumPy arrays behind CuPy's rules, to run the GPU path's Python.

minidni's GPU path is the same Python as its CPU path, run on cupy arrays. Where that Python uses NumPy freedoms
that CuPy does not have, it crashes on a GPU at the first batch - and no test without a GPU can see it, because
the arrays there are NumPy's. This module makes them visible. `CupyStandin` is an array module whose arrays
(`DeviceArray`) hold NumPy arrays but accept only what CuPy accepts:

    - a function or method CuPy lacks, or an argument it does not take, raises TypeError / AttributeError as CuPy
      would (what CuPy takes is read from the installed CuPy: minidni.cuda.cupy_api);
    - host and device do not mix: np.asarray(device array) raises (cupy.ndarray.__array__), a NumPy array given to
      any CuPy function but array/asarray raises, and so does assigning one into a device array (CuPy gh-2079);
    - reductions return 0-d device arrays, not scalars, as CuPy's do;
    - every read back to the host - float(), int(), bool(), .item(), .tolist(), .get(), asnumpy(), printing -
      is counted with the line that made it (on a GPU each one waits for the device);
    - an assignment of an array through an index with repeated positions (`a[idx] += v` is one) raises
      `IncompatibleWithCupy`: CuPy writes such positions in parallel and which value lands is undefined;
    - an operation that turns float32 inputs into a float64 result is recorded (on most GPUs float64 is many
      times slower, and a float32 run should have none).

    standin = CupyStandin()
    with standin.active():                  # minidni's backend is now this module, under the name "cupy"
        net = build_network(...)            # parameters are DeviceArrays
        with standin.counting() as reads:
            net.train_step(x, y)
        print(len(reads), reads)            # every host read, with file:line

`StandinKernels` runs the CUDA kernels on the CPU emulator with DeviceArray arguments, so the fused step's Python
runs under the same rules.

What this module deliberately is not: a backend. Nothing chooses it (minidni.core.backend.set_backend never does);
it exists for the tests and `python -m minidni doctor`, and it proves nothing about kernels, timings or numerics on
a GPU. It is also not CuPy: it knows CuPy's API and the rules above, not its every behaviour.
"""

import contextlib
import os
import traceback
from dataclasses import dataclass

import numpy as np

from minidni.cuda.cupy_api import HOST_INPUT_FUNCTIONS, CupyApi

IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array "
    "explicitly."  # cupy.ndarray.__array__'s message
)


class IncompatibleWithCupy(RuntimeError):
    """The code does something CuPy does differently without raising (so a GPU run would silently differ)."""


@dataclass(frozen=True)
class HostRead:
    kind: str  # "float", "int", "bool", "index", "item", "tolist", "get", "asnumpy", "repr"
    where: str  # file:line of the code that asked for it (outside this module)

    def __str__(self):
        return f"{self.kind} at {self.where}"


# frames skipped when naming where a read was made: this module, and to_numpy (the read is its caller's)
_HERE = os.path.dirname(os.path.abspath(__file__))
_SKIPPED = (os.path.abspath(__file__), os.path.join(os.path.dirname(_HERE), "backend.py"))


def _caller():
    """file:line of the innermost frame outside this module and minidni.core.backend: the code that made the read."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if os.path.abspath(frame.filename) not in _SKIPPED:
            return f"{os.path.relpath(frame.filename)}:{frame.lineno}"
    return "?"


# ------------------------------------------------------------------------------------------------------------
# the array


def _binary(name, reflected=False):
    def op(self, other):
        args = (other, self) if reflected else (self, other)
        return self._xp._call(name, args, {})

    return op


def _inplace(name):
    def op(self, other):
        self._xp._call(name, (self, other), {"out": self})
        return self

    return op


def _unary(name):
    def op(self):
        return self._xp._call(name, (self,), {})

    return op


class DeviceArray:
    """A NumPy array that answers like a cupy.ndarray (see the module docstring). `_a` is the NumPy array."""

    __array_priority__ = 1000  # NumPy defers binary operators to us, as it does for cupy.ndarray
    __hash__ = None

    def __init__(self, a, xp):
        self._a, self._xp = a, xp

    # -- conversions to the host: counted, as each is a device sync ----------------------------------------------

    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def _read(self, kind):
        self._xp._record(kind)
        return self._a

    def __float__(self):
        return float(self._read("float"))

    def __int__(self):
        return int(self._read("int"))

    def __index__(self):
        return self._read("index").__index__()

    def __bool__(self):
        return bool(self._read("bool"))

    def __complex__(self):
        return complex(self._read("complex"))

    def item(self):
        return self._read("item").item()

    def tolist(self):
        return self._read("tolist").tolist()

    def get(self, stream=None, order="C", out=None, blocking=True):
        a = self._read("get")
        if out is not None:
            out[...] = a
            return out
        return np.array(a, order=order, copy=True)

    def __repr__(self):
        return f"array({np.array2string(self._read('repr'), separator=', ')})"

    def __str__(self):
        return str(self._read("repr"))

    def __format__(self, spec):
        return format(self._read("repr").item() if self._a.ndim == 0 else self._a, spec)

    # -- what stays on the device -------------------------------------------------------------------------------

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield self[i]

    def __getitem__(self, key):
        return self._xp._wrap(self._a[self._xp._index(key)])

    def __setitem__(self, key, value):
        xp = self._xp
        if isinstance(value, np.ndarray):  # cupy: "Refuse assignment from CPU arrays, see gh-2079"
            raise TypeError(f"Unsupported type {type(value)}")
        key = xp._index(key)
        value = value._a if isinstance(value, DeviceArray) else value
        xp._check_repeated_writes(self._a, key, value)
        self._a[key] = value

    def __deepcopy__(self, memo):
        return DeviceArray(self._a.copy(), self._xp)

    def __reduce__(self):
        raise TypeError("a DeviceArray (CuPy stand-in) is not picklable; move it to the host with .get() first")

    def __array_function__(self, func, types, args, kwargs):
        # np.sum(device array) and the like run CuPy's function, as cupy.ndarray.__array_function__ does
        module = func.__module__.removeprefix("numpy").lstrip(".")
        path = ".".join(p for p in (module, func.__name__) if p and not p.startswith("_"))
        return self._xp._call(path, args, kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        path = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        return self._xp._call(path, inputs, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        xp = self._xp
        if name not in xp.api.ndarray_attributes():
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return xp._wrap(attr)  # shape, dtype, flags, T, ...

        def method(*args, **kwargs):
            return xp._call(f"ndarray.{name}", args, kwargs, bound=attr)

        return method

    __add__, __radd__, __iadd__ = _binary("add"), _binary("add", True), _inplace("add")
    __sub__, __rsub__, __isub__ = _binary("subtract"), _binary("subtract", True), _inplace("subtract")
    __mul__, __rmul__, __imul__ = _binary("multiply"), _binary("multiply", True), _inplace("multiply")
    __truediv__, __rtruediv__ = _binary("true_divide"), _binary("true_divide", True)
    __itruediv__ = _inplace("true_divide")
    __floordiv__, __rfloordiv__ = _binary("floor_divide"), _binary("floor_divide", True)
    __mod__, __rmod__ = _binary("remainder"), _binary("remainder", True)
    __pow__, __rpow__, __ipow__ = _binary("power"), _binary("power", True), _inplace("power")
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __and__, __rand__ = _binary("bitwise_and"), _binary("bitwise_and", True)
    __or__, __ror__ = _binary("bitwise_or"), _binary("bitwise_or", True)
    __xor__, __rxor__ = _binary("bitwise_xor"), _binary("bitwise_xor", True)
    __lt__, __le__ = _binary("less"), _binary("less_equal")
    __gt__, __ge__ = _binary("greater"), _binary("greater_equal")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")
    __neg__, __pos__, __abs__ = _unary("negative"), _unary("positive"), _unary("absolute")
    __invert__ = _unary("invert")


# ------------------------------------------------------------------------------------------------------------
# the module


class _Namespace:
    """A sub-namespace of the stand-in (linalg, random, lib.stride_tricks, add.at ...), resolved lazily."""

    def __init__(self, xp, path):
        self._xp, self._path = xp, path

    def __getattr__(self, name):
        return self._xp._attribute(f"{self._path}.{name}")

    def __call__(self, *args, **kwargs):
        return self._xp._call(self._path, args, kwargs)

    def __repr__(self):
        return f"<cupy stand-in {self._path}>"


class CupyStandin:
    """The array module: `standin.zeros(...)`, `standin.einsum(...)`, `standin.ndarray`, ... (see module docstring)."""

    __name__ = "cupy"  # what error messages call it (checks.check_type prints xp.__name__)

    def __init__(self, api=None):
        self.api = CupyApi() if api is None else api
        self.ndarray = DeviceArray
        self.reads = None  # a list while counting() is active
        self.float64_from_float32 = []  # file:line of every operation that promoted float32 inputs to float64

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._attribute(name)

    def __repr__(self):
        return f"<CuPy {self.api.version} stand-in on NumPy>"

    # -- switching minidni over, and watching ------------------------------------------------------------------

    @contextlib.contextmanager
    def active(self):
        """Make this the active array module (minidni.core.backend, under the name "cupy") for the block."""
        from minidni.core import backend

        saved = backend.active_module()
        backend.use_array_module("cupy", self)
        try:
            yield self
        finally:
            backend.use_array_module(*saved)

    @contextlib.contextmanager
    def counting(self):
        """Count host reads for the block: yields the list that collects them (HostRead items)."""
        saved, self.reads = self.reads, []
        try:
            yield self.reads
        finally:
            self.reads = saved

    def _record(self, kind):
        if self.reads is not None:
            self.reads.append(HostRead(kind, _caller()))

    # -- attribute lookup: what CuPy has, nothing else ----------------------------------------------------------

    def _attribute(self, path):
        if not self.api.has(path):
            head, _, name = path.rpartition(".")
            raise AttributeError(f"module 'cupy{'.' + head if head else ''}' has no attribute {name!r}")
        obj = self.api.resolve(path)
        if path == "ndarray":
            return DeviceArray
        if isinstance(obj, type) and issubclass(obj, np.generic) or isinstance(obj, (np.dtype, int, float, str)):
            return obj  # cupy.float32 is numpy.float32; cupy.inf is NumPy's too
        if obj is None:
            return obj  # cupy.newaxis
        return _Namespace(self, path)

    # -- calling: check against CuPy, move nothing between host and device, run NumPy, wrap ---------------------

    def _call(self, path, args, kwargs, bound=None):
        verdict = self.api.check(path, len(args), list(kwargs))
        if verdict.ok is False:  # (None: CuPy states no signature to check against; the call runs)
            raise TypeError(f"{verdict.problem} [CuPy stand-in]")
        if path in HOST_INPUT_FUNCTIONS:
            return self._host_input(path, args, kwargs)
        self._refuse_host_arrays(path, args, kwargs)
        out = kwargs.get("out")
        np_args = [self._unwrap(a) for a in args]
        np_kwargs = {k: self._unwrap(v) for k, v in kwargs.items()}
        fn = bound if bound is not None else self._numpy_function(path)
        result = fn(*np_args, **np_kwargs)
        self._watch_dtypes(args if bound is None else (bound.__self__, *args), result)
        if isinstance(out, DeviceArray) and result is out._a:
            return out
        if isinstance(out, tuple) and isinstance(result, tuple):
            return out
        return self._wrap(result)

    def _host_input(self, path, args, kwargs):
        if path == "asnumpy":
            a = args[0]
            if isinstance(a, DeviceArray):
                self._record("asnumpy")
                return np.array(a._a, copy=True)
            return np.asarray(a)
        if path == "get_array_module":
            return self if any(isinstance(a, DeviceArray) for a in args) else np
        a = args[0] if args else kwargs.pop("a" if path != "array" else "obj")
        dtype = kwargs.get("dtype", args[1] if len(args) > 1 else None)
        if isinstance(a, DeviceArray):  # already on the device: asarray returns it, array copies it
            if path != "array" and (dtype is None or np.dtype(dtype) == a.dtype):
                return a
            a = a._a
        elif isinstance(a, (list, tuple)) and any(isinstance(v, DeviceArray) for v in a):
            return self._call("stack", (list(a),), {})
        return DeviceArray(np.array(a, dtype=dtype, copy=True), self)  # a copy, as on a device

    def _refuse_host_arrays(self, path, args, kwargs):
        for v in [*args, *kwargs.values()]:
            items = v if isinstance(v, (list, tuple)) else (v,)
            for item in items:
                if isinstance(item, np.ndarray):
                    raise TypeError(
                        f"cupy.{path} got a NumPy array (shape {item.shape}); CuPy does not mix host and device "
                        f"arrays: upload it with cupy.asarray, or keep the computation on the host [CuPy stand-in]"
                    )

    def _numpy_function(self, path):
        obj = np
        for part in path.split("."):
            if part == "ndarray":
                raise AssertionError("ndarray methods are called bound")
            obj = getattr(obj, part, None)
            if obj is None:
                raise NotImplementedError(f"cupy.{path} has no NumPy equivalent for the stand-in to run")
        return obj

    def _unwrap(self, v):
        if isinstance(v, DeviceArray):
            return v._a
        if isinstance(v, list):
            return [self._unwrap(x) for x in v]
        if isinstance(v, tuple):
            return tuple(self._unwrap(x) for x in v)
        return v

    def _wrap(self, v):
        if isinstance(v, np.ndarray):
            return DeviceArray(v, self)
        if isinstance(v, np.generic):  # CuPy's reductions and element reads give 0-d device arrays
            return DeviceArray(np.asarray(v), self)
        if isinstance(v, tuple):
            return tuple(self._wrap(x) for x in v)
        if isinstance(v, list):
            return [self._wrap(x) for x in v]
        return v

    def _index(self, key):
        """An index with device arrays unwrapped; NumPy index arrays are fine (CuPy uploads them)."""
        if isinstance(key, tuple):
            return tuple(self._index(k) for k in key)
        return key._a if isinstance(key, DeviceArray) else key

    def _check_repeated_writes(self, target, key, value):
        """Refuse an assignment through an index array that names some position twice, unless the value is one
        scalar. `a[idx] += v` arrives here as `a[idx] = a[idx] + v`: with repeats NumPy keeps the last sum and CuPy
        an undefined one, and neither accumulates - whatever the values happen to be this time."""
        parts = key if isinstance(key, tuple) else (key,)
        if not any(isinstance(k, (np.ndarray, list)) and np.asarray(k).dtype.kind in "iu" for k in parts):
            return
        if np.ndim(value) == 0:
            return  # one value for every position: the same result whichever write lands
        flat = np.arange(target.size).reshape(target.shape)[key].ravel()
        if np.unique(flat).size != flat.size:
            raise IncompatibleWithCupy(
                f"assignment through an index with repeated positions at {_caller()}: CuPy writes the repeats in "
                f"parallel and which value lands is undefined (NumPy keeps the last); to accumulate use "
                f"cupyx.scatter_add (np.add.at), else make the index unique"
            )

    def _watch_dtypes(self, args, result):
        inputs = [a for a in args if isinstance(a, (DeviceArray, np.ndarray))]
        results = result if isinstance(result, tuple) else (result,)
        if any(a.dtype == np.float32 for a in inputs) and not any(a.dtype == np.float64 for a in inputs):
            if any(getattr(r, "dtype", None) == np.float64 for r in results):
                self.float64_from_float32.append(_caller())


# ------------------------------------------------------------------------------------------------------------
# kernels on the emulator, fed DeviceArrays


class StandinKernels:
    """minidni.cuda.loader.Kernels' interface over the CPU emulator, taking and returning DeviceArrays."""

    target = "emulator"

    def __init__(self, standin, emulated):
        self.xp, self._emulated = standin, emulated

    def function(self, stem, name):
        f = self._emulated.function(stem, name)

        def launch(grid, block, args, shared_mem=0):
            return f(grid, block, tuple(a._a if isinstance(a, DeviceArray) else a for a in args), shared_mem=shared_mem)

        return launch

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return "Kernels('emulator' behind the CuPy stand-in)"


def standin_kernels(standin):
    from minidni.cuda.loader import get_kernels

    return StandinKernels(standin, get_kernels("emulator"))
