"""A CPU emulator of the CUDA execution model: runs the unchanged kernels/*.cu on NumPy arrays, with no GPU.

The call shape is CuPy's, so the same launcher code drives either target:

    mod = EmulatedModule(code=source, options=("-I/some/include",), name="sg_predict")  # cupy.RawModule(...)
    k = mod.get_function("sg_predict_forward_v1")                                        # an extern "C" __global__
    k((n_blocks,), (256,), (x, W, y, np.int32(n)), shared_mem=1024)                      # RawKernel.__call__

How it works, in the order this module does it:
  1. rewrite the source in memory (the file on disk is never touched): `extern __shared__ T name[];` becomes a
     reference to a per-launch buffer, and one small C++ trampoline per kernel is appended that unpacks CUDA-style
     arguments (`void** args`, args[i] pointing to the i-th value);
  2. compile it with the platform C++ compiler, `-include emu/runtime.h` (the CUDA vocabulary as C++), linked with
     emu/fiber.cpp (the scheduler: one fiber per CUDA thread, blocks one after another), cached by a hash of
     everything the compiler reads: the source, every header it includes (found along its -I folders), the
     flags and the compiler's version - so an edited header rebuilds every kernel that includes it;
  3. check every launch's arguments against the kernel's parsed signature the way a GPU would need them - CuPy
     passes a Python int as int64 and a Python float as float64, which an `int` or `float` parameter silently
     misreads - then launch through ctypes.

What the emulator catches, as exceptions: deadlocks and divergent barriers or warp collectives (DeadlockError),
masks naming lanes that do not exist, writes past the dynamic shared memory, device asserts (EmulatorError), and
wrong arguments or launch shapes (LaunchError). Missing barriers show up as deterministic wrong results, and
reads of unwritten dynamic shared memory as NaN. With MINIDNI_EMU_SANITIZE=address the kernels are built with
AddressSanitizer, which reports out-of-bounds reads and writes at the .cu line (see `sanitizer_command`).

What it deliberately is not: a performance model, a race detector or a bit-exact GPU. Blocks run serially and
threads run until they wait, so spin-waits on flags hang; uninitialised static __shared__ memory is not detected;
floating-point results differ from a GPU's in the last bits (compare with tolerances).
"""

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minidni.cuda.includes import included_headers

EMU_DIR = Path(__file__).resolve().parent / "emu"
RUNTIME_HEADER = EMU_DIR / "runtime.h"
RUNTIME_SOURCE = EMU_DIR / "fiber.cpp"

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024  # what a GPU allows without opting in (cudaFuncSetAttribute)


# ----------------------------------------------------------------------------------------------------------------
# Errors


class EmulatorError(RuntimeError):
    """The emulator could not build or run a kernel, or the kernel did something a GPU would not survive."""


class CompileError(EmulatorError):
    """The C++ compiler rejected the kernel source; the message carries its output."""


class DeadlockError(EmulatorError):
    """No CUDA thread can make progress: a divergent or unreachable barrier or warp collective."""


class LaunchError(EmulatorError):
    """The launch itself is wrong (argument count, types, dtypes, layout, or grid/block/shared_mem limits).

    A subclass of EmulatorError (not TypeError), so `except EmulatorError` catches everything this module raises.
    """


# ----------------------------------------------------------------------------------------------------------------
# Build configuration: compiler, flags, cache


def _find_compiler():
    cxx = os.environ.get("CXX")
    if cxx:
        return shlex.split(cxx)
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


_compiler_ids = {}


def _compiler_id(cxx):
    """The compiler's version banner: part of the cache key, so a compiler upgrade rebuilds everything."""
    key = tuple(cxx)
    if key not in _compiler_ids:
        out = subprocess.run([*cxx, "--version"], check=False, capture_output=True, text=True)
        _compiler_ids[key] = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"
    return _compiler_ids[key]


def sanitizer():
    """The sanitizer kernels are built with: "address" (MINIDNI_EMU_SANITIZE=address) or None."""
    mode = os.environ.get("MINIDNI_EMU_SANITIZE", "").strip().lower()
    if mode in ("", "0", "none", "off"):
        return None
    if mode != "address":
        raise EmulatorError(f"MINIDNI_EMU_SANITIZE={mode!r} is not supported; use 'address' or leave it unset")
    return mode


def _flags():
    """Compiler flags shared by the runtime and every kernel (and therefore part of every cache key)."""
    flags = ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", "-ffp-contract=off"]
    flags += ["-Wno-unknown-pragmas"]  # `#pragma unroll` is for nvcc
    if sanitizer() == "address":
        flags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    else:
        flags += ["-O2"]
    if os.environ.get("MINIDNI_EMU_SWITCH", "").lower() == "ucontext":  # force the portable fiber switch
        flags += ["-DEMU_USE_UCONTEXT"]
    return flags


def cache_dir():
    """Where built kernels live: $MINIDNI_EMU_CACHE, else $XDG_CACHE_HOME/minidni/emu or ~/.cache/minidni/emu."""
    if os.environ.get("MINIDNI_EMU_CACHE"):
        return Path(os.environ["MINIDNI_EMU_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minidni" / "emu"


def sanitizer_command(pytest_args="tests/test_emulator.py"):
    """The shell command that runs pytest with kernels built under AddressSanitizer.

    libasan must be the first library loaded into the Python process (LD_PRELOAD), and CPython's own allocations
    at exit are not worth reporting (detect_leaks=0).
    """
    return (
        "ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$(g++ -print-file-name=libasan.so) "
        f"MINIDNI_EMU_SANITIZE=address python -m pytest -q {pytest_args}"
    )


def _run_compiler(cmd, what):
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()
        raise CompileError(f"{what} failed to compile:\n$ {shlex.join(cmd)}\n{output[-6000:]}")


def _build_cached(key_parts, suffix, build):
    """Returns the cached artifact for key_parts, building it with build(tmp_path) first if needed.

    The artifact is written under a temporary name and renamed into place, so concurrent processes (pytest -n,
    two terminals) never see a half-written file; at worst both build it and one rename wins.
    """
    digest = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:32]
    directory = cache_dir()
    target = directory / f"{digest}{suffix}"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{digest}.", suffix=suffix)
        os.close(fd)
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def _runtime_object(cxx):
    """fiber.cpp compiled once per compiler and flag set; every kernel library links it."""
    header, source = RUNTIME_HEADER.read_text(), RUNTIME_SOURCE.read_text()
    flags = _flags()
    key = ["runtime", _compiler_id(cxx), *flags, header, source]

    def build(out):
        _run_compiler([*cxx, *flags, "-I", str(EMU_DIR), "-c", str(RUNTIME_SOURCE), "-o", out], "the emulator runtime")

    return _build_cached(key, ".o", build)


# ----------------------------------------------------------------------------------------------------------------
# Availability


_availability = {}


def unavailable_reason():
    """Why the emulator cannot run on this machine (no C++ compiler, runtime does not build, ...), or None."""
    cxx = _find_compiler()
    key = (tuple(cxx or ()), tuple(_flags()))
    if key not in _availability:
        if os.name != "posix":
            reason = f"the CUDA emulator needs a POSIX system (mmap, fibers); this is {sys.platform}"
        elif cxx is None:
            reason = "no C++ compiler found: install g++ (or clang++) or set CXX"
        else:
            try:
                _runtime_object(cxx)
                reason = None
            except (CompileError, OSError) as e:
                reason = f"the emulator runtime does not build with {shlex.join(cxx)}: {str(e)[-1500:]}"
        _availability[key] = reason
    return _availability[key]


def emulator_available():
    """True when kernels can be compiled and run on this machine."""
    return unavailable_reason() is None


def _check_sanitizer_runtime():
    """ASan-built libraries only load into a process that started with libasan; say how, instead of a dlopen error."""
    if sanitizer() != "address":
        return
    try:
        ctypes.CDLL(None).__asan_init  # noqa: B018 - present only when libasan is loaded
    except AttributeError:
        raise EmulatorError(
            "MINIDNI_EMU_SANITIZE=address needs AddressSanitizer's runtime loaded before Python starts. Run:\n  "
            + sanitizer_command()
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Reading kernel source: signatures and the extern __shared__ rewrite


# Comments and string literals, blanked out before any pattern matching (keeping every offset and newline), so a
# kernel in a comment is not found. The literal "C" survives: extern "C" is what marks a kernel.
_COMMENTS_AND_STRINGS = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.DOTALL)


def _blank_comments_and_strings(source):
    def blank(m):
        text = m.group(0)
        if text == '"C"':
            return text
        if text[0] in "\"'":
            return text[0] + " " * (len(text) - 2) + text[-1]
        return re.sub(r"[^\n]", " ", text)

    return _COMMENTS_AND_STRINGS.sub(blank, source)


_LAUNCH_BOUNDS = r"(?:__launch_bounds__\s*\([^()]*\)\s*)?"
_KERNEL = re.compile(rf"\b__global__\s+{_LAUNCH_BOUNDS}void\s+{_LAUNCH_BOUNDS}(?P<name>[A-Za-z_]\w*)\s*\(")
_EXTERN_C_BLOCK = re.compile(r'\bextern\s*"C"\s*\{')
_EXTERN_C_BEFORE = re.compile(r'\bextern\s*"C"\s*$')
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\b(?P<decl>[^;\[]*)\[\s*\](?P<post>[^;]*);")
_ATTRIBUTES = re.compile(r"__align__\s*\([^()]*\)|alignas\s*\([^()]*\)|__attribute__\s*\(\(.*?\)\)")

# Scalar parameter types and the NumPy dtype a caller must pass (sizes as on a 64-bit Linux GPU build).
SCALAR_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "signed": np.int32,
    "signed int": np.int32,
    "int32_t": np.int32,
    "unsigned": np.uint32,
    "unsigned int": np.uint32,
    "uint32_t": np.uint32,
    "long": np.int64,
    "long int": np.int64,
    "long long": np.int64,
    "long long int": np.int64,
    "int64_t": np.int64,
    "unsigned long": np.uint64,
    "unsigned long long": np.uint64,
    "unsigned long long int": np.uint64,
    "uint64_t": np.uint64,
    "size_t": np.uint64,
    "short": np.int16,
    "int16_t": np.int16,
    "unsigned short": np.uint16,
    "uint16_t": np.uint16,
    "char": np.int8,
    "signed char": np.int8,
    "int8_t": np.int8,
    "unsigned char": np.uint8,
    "uint8_t": np.uint8,
    "bool": np.bool_,
}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: `const float* __restrict__ x` -> name "x", declared "const float* __restrict__",
    base "float", pointer, const."""

    name: str
    declared: str  # the type as written, for messages: "const float* __restrict__"
    base: str  # the element type with qualifiers removed: "float", "unsigned int"
    pointer: bool
    is_const: bool  # a const pointee: the kernel promises not to write through it

    @property
    def dtype(self):
        """The NumPy dtype this parameter needs (of the array for a pointer), or None for void* / unknown types."""
        return SCALAR_DTYPES.get(self.base)


def _split_top_level(text, sep=","):
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "(<[{"
        depth -= ch in ")>]}"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _parse_param(text, index):
    declared = " ".join(text.split("=")[0].split())
    tokens = re.findall(r"[A-Za-z_]\w*|\*|&|\[", declared)
    if "&" in tokens:
        raise EmulatorError(f"kernel parameter `{declared}`: CUDA kernels cannot take references")
    words = [t for t in tokens if re.match(r"\w", t) and t not in _QUALIFIERS and t != "struct"]
    pointer = "*" in tokens or "[" in tokens
    if len(words) >= 2 and " ".join(words) not in SCALAR_DTYPES:
        name, base_words = words[-1], words[:-1]
    else:  # an unnamed parameter: `int` or `unsigned int`
        name, base_words = f"arg{index}", words
    first_star = tokens.index("*") if "*" in tokens else len(tokens)
    is_const = "const" in tokens[:first_star]
    if name != f"arg{index}":  # drop the name (and an array suffix) from the type as written
        declared = re.sub(rf"\b{name}\b\s*(\[[^\]]*\])?\s*$", "", declared).strip() + (" *" if "[" in declared else "")
    return Param(name, declared, " ".join(base_words), pointer, is_const)


def _matching_paren(text, open_index):
    depth = 0
    for i in range(open_index, len(text)):
        depth += text[i] == "("
        depth -= text[i] == ")"
        if depth == 0:
            return i
    raise EmulatorError("unbalanced parentheses in a kernel signature")


def _extern_c_ranges(blanked):
    ranges = []
    for m in _EXTERN_C_BLOCK.finditer(blanked):
        depth = 0
        for i in range(m.end() - 1, len(blanked)):
            depth += blanked[i] == "{"
            depth -= blanked[i] == "}"
            if depth == 0:
                ranges.append((m.end(), i))
                break
    return ranges


def parse_kernels(source):
    """The extern "C" __global__ functions of a source text: {name: (Param, ...)}, in order of appearance.

    Both spellings count: `extern "C" __global__ void f(...)` and a kernel inside an `extern "C" { ... }` block.
    Template and C++-linkage kernels are not entry points (CuPy would need name_expressions) and are skipped.
    """
    blanked = _blank_comments_and_strings(source)
    blocks = _extern_c_ranges(blanked)
    kernels = {}
    for m in _KERNEL.finditer(blanked):
        extern_c = _EXTERN_C_BEFORE.search(blanked, 0, m.start()) or any(a <= m.start() < b for a, b in blocks)
        is_template = blanked[: m.start()].rstrip().endswith(">")  # template<...> __global__: no C linkage
        if not extern_c or is_template or m.group("name") in kernels:
            continue
        close = _matching_paren(blanked, m.end() - 1)
        params = _split_top_level(blanked[m.end() : close])
        if params == ["void"]:
            params = []
        kernels[m.group("name")] = tuple(_parse_param(p, i) for i, p in enumerate(params))
    return kernels


def rewrite_extern_shared(source):
    """`extern __shared__ float smem[];` -> `static float* const& smem = <reference to the launch's buffer>;`.

    A reference (not a copy) to the runtime's pointer, so it is valid at namespace scope too, where the buffer is
    only known at launch time. Alignment attributes are dropped: the buffer is 64-byte aligned. Line numbers are
    kept (the replacement keeps the declaration's newlines) so compiler and sanitizer messages point at the .cu.
    """
    blanked = _blank_comments_and_strings(source)
    pieces, last = [], 0
    for m in _EXTERN_SHARED.finditer(blanked):
        decl = _ATTRIBUTES.sub(" ", m.group("decl")).split()
        if len(decl) < 2:
            raise EmulatorError(f"cannot read the extern __shared__ declaration `{source[m.start() : m.end()]}`")
        ctype, name = " ".join(decl[:-1]), decl[-1]
        newlines = "\n" * source.count("\n", m.start(), m.end())
        pieces += [
            source[last : m.start()],
            f"static {ctype}* const& {name} = reinterpret_cast<{ctype}* const&>(::emu::dynamic_smem);{newlines}",
        ]
        last = m.end()
    pieces.append(source[last:])
    return "".join(pieces)


def _trampolines(kernels):
    """One exported C function per kernel: emu_trampoline_<name>(void** args) calls the kernel with typed args.

    The argument types come from the kernel's own C++ signature (emu::invoke deduces them); the static_assert
    makes the compiler confirm that this module parsed the same number of parameters.
    """
    lines = ['#line 1 "<minidni emulator: generated trampolines>"']
    for name, params in kernels.items():
        lines.append(
            f'extern "C" __attribute__((visibility("default"))) void emu_trampoline_{name}(void** args) {{\n'
            f'    static_assert(::emu::arity({name}) == {len(params)}, "minidni emulator: parameters of {name} '
            f'were misread");\n'
            f"    ::emu::invoke({name}, args);\n}}"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Launch checks


def _dims(value, what, limits):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise LaunchError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise LaunchError(f"{what}.{'xyz'[axis]} = {d} is outside 1..{limit} (as on a GPU)")
    return dims


def _python_scalar_hint(param, value):
    np_name = np.dtype(param.dtype).name
    reaches = "int64" if isinstance(value, int) else "float64"
    kind = "a Python bool" if isinstance(value, bool) else f"a Python {type(value).__name__}"
    return (
        f"parameter {param.name} is `{param.declared}`: pass np.{np_name}(...); {kind} reaches a GPU kernel as "
        f"{reaches} (that is how CuPy passes it), and the kernel silently reads the wrong bytes"
    )


def _check_argument(kernel, param, value):
    """Returns the bytes-holder for one argument, or raises LaunchError naming kernel, parameter and expectation."""
    where = f"kernel {kernel}: "
    if param.pointer:
        if not isinstance(value, np.ndarray):
            raise LaunchError(
                where + f"parameter {param.name} is `{param.declared}`: pass a NumPy array, got {type(value).__name__}"
            )
        if param.dtype is not None and value.dtype != param.dtype:
            raise LaunchError(
                where + f"parameter {param.name} is `{param.declared}`: needs an array of dtype "
                f"{np.dtype(param.dtype).name}, got {value.dtype.name} (a GPU reinterprets the bytes, it never converts)"
            )
        if param.dtype is None and param.base != "void":
            raise LaunchError(
                where + f"parameter {param.name} is `{param.declared}`: the emulator cannot check this pointer type"
            )
        if not value.flags.c_contiguous:
            raise LaunchError(
                where + f"parameter {param.name} is `{param.declared}`: the array must be C-contiguous "
                f"(got strides {value.strides} for shape {value.shape}); pass np.ascontiguousarray(...)"
            )
        if not param.is_const and not value.flags.writeable:
            raise LaunchError(
                where + f"parameter {param.name} is `{param.declared}` (writable) but the array is read-only"
            )
        return ctypes.c_void_p(value.ctypes.data)
    if param.dtype is None:
        raise LaunchError(where + f"parameter {param.name} is `{param.declared}`: the emulator cannot pass this type")
    if isinstance(value, (bool, int, float)):
        raise LaunchError(where + _python_scalar_hint(param, value))
    if not isinstance(value, np.generic) or value.dtype != param.dtype:
        got = f"{type(value).__name__}" + (f" of dtype {value.dtype.name}" if hasattr(value, "dtype") else "")
        raise LaunchError(
            where
            + f"parameter {param.name} is `{param.declared}`: pass np.{np.dtype(param.dtype).name}(...), got {got}"
        )
    return np.array(value)  # owns the bytes for the duration of the launch


# ----------------------------------------------------------------------------------------------------------------
# Modules and kernels

_launch_lock = threading.Lock()  # the runtime's launch state is global: one launch at a time per process
_loaded = {}  # path of a built library -> ctypes.CDLL, so a module built twice is loaded once


class EmulatedKernel:
    """One extern "C" __global__ function of an EmulatedModule; call it like a cupy.RawKernel."""

    def __init__(self, module, name, params):
        self.module = module
        self.name = name
        self.params = params
        self.max_dynamic_shared_size_bytes = DEFAULT_MAX_DYNAMIC_SHARED
        self._entry = ctypes.cast(getattr(module.library, f"emu_trampoline_{name}"), ctypes.c_void_p)

    def __repr__(self):
        signature = ", ".join(f"{p.declared} {p.name}" for p in self.params)
        return f"<EmulatedKernel {self.name}({signature})>"

    def __call__(self, grid, block, args, *, shared_mem=0):
        grid = _dims(grid, "grid", MAX_GRID_DIM)
        block = _dims(block, "block", MAX_BLOCK_DIM)
        threads = block[0] * block[1] * block[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise LaunchError(
                f"kernel {self.name}: block {block} has {threads} threads; at most {MAX_THREADS_PER_BLOCK}"
            )
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise LaunchError(f"kernel {self.name}: shared_mem must be a non-negative int, got {shared_mem!r}")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise LaunchError(
                f"kernel {self.name}: shared_mem={shared_mem} bytes exceeds max_dynamic_shared_size_bytes="
                f"{self.max_dynamic_shared_size_bytes} (a GPU needs an explicit opt-in above 48 KiB)"
            )
        if not isinstance(args, (tuple, list)):
            raise LaunchError(f"kernel {self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            expected = ", ".join(f"{p.declared} {p.name}" for p in self.params)
            raise LaunchError(f"kernel {self.name} takes {len(self.params)} arguments ({expected}), got {len(args)}")
        holders = [_check_argument(self.name, p, a) for p, a in zip(self.params, args)]
        pointers = (ctypes.c_void_p * max(1, len(holders)))(
            *[ctypes.addressof(h) if isinstance(h, ctypes.c_void_p) else h.ctypes.data for h in holders]
        )
        message = ctypes.create_string_buffer(16384)
        with _launch_lock:
            status = self.module.library.emu_launch(
                self._entry,
                pointers,
                (ctypes.c_uint * 3)(*grid),
                (ctypes.c_uint * 3)(*block),
                ctypes.c_ulonglong(int(shared_mem)),
                message,
                ctypes.c_ulonglong(len(message)),
            )
        if status != 0:
            error = DeadlockError if status == 1 else EmulatorError  # emu_launch: 1 deadlock, 2 any other error
            raise error(f"kernel {self.name}: {message.value.decode(errors='replace')}")


class EmulatedModule:
    """A CUDA source built for the CPU emulator; mirrors cupy.RawModule(code=..., options=...).

    code: the kernel source. path: alternatively, a file to read it from (as RawModule's path=); the file is only
    read. options: NVRTC-style options; -I/-D (and --include-path=/--define-macro=) are passed to the compiler,
    every other option (-arch, --std, -ftz, ...) is a GPU code-generation choice and is ignored. name: a label
    for messages and for __FILE__ when the source does not start with a #line directive.
    """

    def __init__(self, code=None, *, path=None, options=(), name=None):
        if (code is None) == (path is None):
            raise EmulatorError("EmulatedModule needs exactly one of code= or path=")
        if path is not None:
            code = Path(path).read_text()
            label = str(path)
        else:
            label = f"{name}.cu" if name else "<emulated module>"
        reason = unavailable_reason()
        if reason:
            raise EmulatorError(f"the CUDA emulator is not available: {reason}")
        _check_sanitizer_runtime()
        self.name = name or label
        self.options = tuple(options)
        self.kernels = parse_kernels(code)
        if not code.lstrip().startswith("#line"):  # so __FILE__, compiler and ASan messages name the kernel file
            quoted = label.replace("\\", "\\\\").replace('"', '\\"')
            code = f'#line 1 "{quoted}"\n' + code
        self.source = rewrite_extern_shared(code) + "\n" + _trampolines(self.kernels)
        self.library_path = self._build()
        if str(self.library_path) not in _loaded:
            library = ctypes.CDLL(str(self.library_path))
            library.emu_launch.restype = ctypes.c_int
            uints = ctypes.POINTER(ctypes.c_uint)
            library.emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, uints, uints, ctypes.c_ulonglong]
            library.emu_launch.argtypes += [ctypes.c_char_p, ctypes.c_ulonglong]
            _loaded[str(self.library_path)] = library
        self.library = _loaded[str(self.library_path)]

    def _compiler_options(self):
        passed, options = [], list(self.options)
        while options:
            option = options.pop(0)
            for short, long in (("-I", "--include-path="), ("-D", "--define-macro=")):
                if option in (short, long.rstrip("=")) and options:
                    passed.append(short + options.pop(0))
                elif option.startswith(long):
                    passed.append(short + option[len(long) :])
                elif option.startswith(short):
                    passed.append(option)
        return passed

    def _headers(self):
        """The files the source's `#include "..."` lines pull in, found along the -I folders as the compiler will
        (it compiles a copy in an empty temporary folder, so the -I folders are where it looks)."""
        include_dirs = [option[2:] for option in self._compiler_options() if option.startswith("-I")]
        return included_headers(self.source, include_dirs)

    def _build(self):
        cxx = _find_compiler()
        runtime = _runtime_object(cxx)
        flags, extra = _flags(), self._compiler_options()
        key = ["module", _compiler_id(cxx), *flags, *extra, RUNTIME_HEADER.read_text(), str(runtime), self.source]
        # the headers' text too: the source alone names a header but does not say what is in it
        key += [f"{path}\n{path.read_text(encoding='utf-8')}" for path in self._headers()]

        def build(out):
            with tempfile.TemporaryDirectory() as tmp:
                source = Path(tmp) / "kernel.cpp"
                source.write_text(self.source)
                cmd = [*cxx, *flags, "-shared", "-include", str(RUNTIME_HEADER), *extra]
                cmd += ["-x", "c++", str(source), "-x", "none", str(runtime), "-o", out]
                _run_compiler(cmd, f"kernel source {self.name}")

        return _build_cached(key, ".so", build)

    def get_function(self, name):
        """The kernel called `name` (an extern "C" __global__ function), like RawModule.get_function."""
        if name not in self.kernels:
            known = ", ".join(self.kernels) or "none"
            raise EmulatorError(f'{self.name} has no extern "C" __global__ function {name!r} (found: {known})')
        return EmulatedKernel(self, name, self.kernels[name])
