"""NVRTC, the CUDA runtime compiler that CuPy uses, called with exactly CuPy's options, so kernels compile with no GPU.

On a GPU, `cupy.RawModule(code=..., options=...)` hands the source to NVRTC together with a list of options that
CuPy builds itself, and loads the result. NVRTC needs no driver and no device, so calling it here with that same
list gives the same accept/reject verdict, the same cubin and the same ptxas resource report (registers, shared
memory, spills) that a user's GPU would get. That makes it the compile gate for kernels/*.cu: nvcc is not, because
it sees host headers (it accepts `INFINITY`, which NVRTC rejects).

In the order of this file:
  1. cupy_options(): the list CuPy 14.2 builds, step by step, each step named after the CuPy function it copies
     (tests/test_cupy_compile.py runs the installed CuPy's own code and fails when the two differ);
  2. two ways to the same library: CuPy's binding `cupy.cuda.nvrtc` (what CuPy itself calls, no device needed)
     and plain ctypes on the `nvidia-cuda-nvrtc` wheel (`pip install "nvidia-cuda-nvrtc>=13,<14"`, or the path in
     $MINIDNI_NVRTC), so that machines without CuPy still have the gate;
  3. compile(), and the parser of ptxas' report.

This module deliberately is not a loader or a launcher (see loader.py / the emulator): it returns bytes and a log,
and it wraps only the handful of NVRTC calls needed for that.
"""

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass


class NvrtcNotFound(RuntimeError):
    """libnvrtc could not be located or loaded."""


class NvrtcError(RuntimeError):
    """An NVRTC call failed for a reason other than the source not compiling."""


class NvrtcCompileError(RuntimeError):
    """The source did not compile; the message holds the file name and NVRTC's full log."""

    def __init__(self, name, log, options):
        self.name, self.log, self.options = name, log, tuple(options)
        super().__init__(f"NVRTC failed to compile {name} with {' '.join(options)}:\n{log}")


@dataclass(frozen=True)
class CompileResult:
    code: bytes  # PTX text (compute_XX) or a cubin (sm_XX)
    kind: str  # "ptx" or "cubin"
    log: str  # NVRTC's log: warnings, and the ptxas report when asked for
    options: tuple  # the exact options NVRTC was given


# --- 1. the options CuPy gives NVRTC ------------------------------------------------------------------------
# cupy.RawModule(code=..., options=...) compiles on first use through this chain (CuPy 14.2):
#   cupy/_core/raw.pyx     _get_raw_module: core.compile_with_cache(code, options, prepend_cupy_headers=False)
#   cupy/_core/core.pyx    compile_with_cache: assemble_cupy_compiler_options(options) adds --std and include paths
#   cupy/cuda/compiler.py  _compile_with_cache_cuda: appends -ftz=true (and the debug options), then
#                          _compile_using_nvrtc_no_warning: appends -arch, --device-as-default-execution-space, --pch
# Only the arch needs the device: everything else can be reproduced here, and is, in that order.

CUPY_VERSION = "14.2"  # the CuPy release whose option list cupy_options() reproduces

# The environment variables that change the list. CuPy reads the first two once, when cupy.cuda.compiler is imported,
# and the third at every compile; here all three are read when called, which is the same in any process that does
# not change them after importing CuPy.
ENV_PTX = "CUPY_COMPILE_WITH_PTX"  # 1: -arch=compute_XX, PTX that the driver compiles, instead of an sm_XX cubin
ENV_PCH = "CUPY_NVRTC_USE_PCH"  # 1: --pch, NVRTC's precompiled headers (NVRTC 12.8 and newer); off by default
ENV_DEBUG = "CUPY_CUDA_COMPILE_WITH_DEBUG"  # 1: --device-debug --generate-line-info

_TEGRA_ARCHS = ("32", "53", "62", "72", "87")  # Jetson boards: compiled for as they are, never clamped


def _env_flag(environ, name):
    """A 0/1 variable as CuPy reads it (compiler._get_bool_env_variable): on only when it is an integer equal to 1."""
    value = environ.get(name)
    if not value:
        return False
    try:
        return int(value) == 1
    except ValueError:
        return False


def max_compute_capability(nvrtc_version):
    """The newest arch CuPy asks NVRTC for (compiler._get_max_compute_capability): "90" for NVRTC 12.0-12.7,
    "120" for 12.8, "121" for 12.9 and 13.x."""
    major, minor = nvrtc_version
    if major == 12 and minor < 8:
        return "90"
    if (major, minor) == (12, 8):
        return "120"
    return "121"


def cupy_arch(compute_capability, nvrtc_version=None, environ=None):
    """The target CuPy compiles for on a GPU of this compute capability ("75", "90", ...): "sm_90" or "compute_90".

    compiler._get_arch clamps the device's capability to the newest NVRTC knows; _get_arch_for_options_for_nvrtc
    then asks for a cubin (sm_XX: machine code, no driver JIT) unless CUPY_COMPILE_WITH_PTX=1.
    """
    environ = os.environ if environ is None else environ
    newest = max_compute_capability(nvrtc_version or version())
    cc = str(compute_capability)
    arch = cc if cc in _TEGRA_ARCHS else min(cc, newest, key=int)
    if not _env_flag(environ, ENV_PTX) and int(arch) <= int(newest):
        return f"sm_{arch}"
    return f"compute_{arch}"


@functools.cache  # the folders do not move while a process runs; looking them up costs a few milliseconds
def cupy_include_options():
    """The -I options CuPy adds around the caller's, as (before, after); empty where CuPy is not installed.

    before: the CCCL (CUB, Thrust, libcu++) bundled with CuPy, put ahead of everything "so that it is searched
    first"; after: CuPy's own headers and the CUDA headers that cuda.pathfinder finds (a toolkit, or the
    nvidia-cuda-runtime wheel that CuPy's [ctk] extra installs). CuPy is located without importing it.
    minidni's kernels include nothing from these folders, so leaving them out (no CuPy here) changes no output.
    """
    spec = importlib.util.find_spec("cupy")
    if spec is None or not spec.submodule_search_locations:
        return (), ()
    # core._get_header_dir_path: the `include` folder next to cupy/_core/core.*.so
    include = os.path.abspath(os.path.join(list(spec.submodule_search_locations)[0], "_core", "include"))
    before = tuple(f"-I{include}/cupy/_cccl/{part}" for part in ("cub", "thrust", "libcudacxx"))
    after = [f"-I{include}"]
    try:
        from cuda.pathfinder import find_nvidia_header_directory
    except ImportError:  # CuPy requires cuda-pathfinder; without it CuPy itself would not import
        return before, tuple(after)
    cuda_headers = find_nvidia_header_directory("cudart")
    if cuda_headers is not None:  # where it is None, CuPy refuses to compile ("Failed to find CUDA headers")
        after.append(f"-I{cuda_headers}")
    return before, tuple(after)


def cupy_options(options=(), arch="sm_80", *, nvrtc_version=None, environ=None, includes=None):
    """Every option CuPy 14.2 hands NVRTC for `cupy.RawModule(code=..., options=options)`, in CuPy's order.

    arch is the target CuPy chose for the device (see cupy_arch). nvrtc_version defaults to the loaded NVRTC's,
    environ to os.environ (for the CUPY_* variables above), includes to cupy_include_options().
    """
    environ = os.environ if environ is None else environ
    before, after = cupy_include_options() if includes is None else includes
    options = list(options)
    # core.assemble_cupy_compiler_options
    if not any("-std=" in o for o in options):  # CuPy's test; it also matches --std=
        options.append("--std=c++17")
    options = [*before, *options, *after]
    # compiler._compile_with_cache_cuda
    options.append("-ftz=true")  # flush denormal floats to zero, for every kernel CuPy compiles
    if _env_flag(environ, ENV_DEBUG):
        options += ["--device-debug", "--generate-line-info"]
    # compiler._compile_using_nvrtc_no_warning
    options.append(f"-arch={arch}")
    options.append("--device-as-default-execution-space")  # functions without __device__ are device functions
    major, minor = nvrtc_version or version()
    if (major >= 13 or (major == 12 and minor >= 8)) and _env_flag(environ, ENV_PCH):
        options.append("--pch")
    return tuple(options)


# --- 2a. the library through CuPy's binding ------------------------------------------------------------------


def cupy_unavailable_reason():
    """Why CuPy's NVRTC binding cannot be used here (CuPy not installed, or it does not import), or None."""
    try:
        from cupy.cuda import nvrtc as cupy_nvrtc  # imports cupy; no device is touched

        cupy_nvrtc.getVersion()  # CuPy finds and loads libnvrtc itself
    except Exception as e:  # an ImportError, CuPy failing on a NumPy it does not support, no libnvrtc
        return f"CuPy's NVRTC is not usable here ({type(e).__name__}: {e}); pip install -e '.[test]' brings it"
    return None


def _compile_with_cupy(source, name, options, headers, kind):
    from cupy.cuda import nvrtc as cupy_nvrtc

    prog = cupy_nvrtc.createProgram(source, name, [h.encode() for h in headers.values()], [n.encode() for n in headers])
    try:
        try:
            cupy_nvrtc.compileProgram(prog, options)
        except cupy_nvrtc.NVRTCError as e:
            log = cupy_nvrtc.getProgramLog(prog)
            if e.status == 6:  # NVRTC_ERROR_COMPILATION: the source is wrong, so the log is the message
                raise NvrtcCompileError(name, log, options) from None
            raise NvrtcError(f"nvrtcCompileProgram({name}) failed: {e}\n{log}") from None
        log = cupy_nvrtc.getProgramLog(prog)
        # exactly the bytes CuPy loads; its getCUBIN drops the cubin's last byte, as if it were PTX's closing NUL
        code = cupy_nvrtc.getCUBIN(prog) if kind == "cubin" else cupy_nvrtc.getPTX(prog)
    finally:
        cupy_nvrtc.destroyProgram(prog)
    return code, log


# --- 2b. the library through ctypes --------------------------------------------------------------------------


def _candidates():
    """Paths to try, most specific first: the pip wheel, then the system loader."""
    try:  # the wheel installs into the `nvidia` namespace package: nvidia/cu13/lib/libnvrtc.so.13
        import nvidia

        roots = list(nvidia.__path__)
    except ImportError:
        roots = [os.path.join(p, "nvidia") for p in sys.path if p]
    for root in roots:
        yield from sorted(glob.glob(os.path.join(root, "cu*", "lib", "libnvrtc.so.13*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    yield "libnvrtc.so.13"


_lib = None


def _load():
    global _lib
    if _lib is not None:
        return _lib
    override = os.environ.get("MINIDNI_NVRTC")
    tried = []
    for path in [override] if override else _candidates():
        try:
            _lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"  {path}: {e}")
            continue
        _declare(_lib)
        return _lib
    if override:  # an explicit path that fails should say so, not fall back to another library silently
        raise NvrtcNotFound(f"MINIDNI_NVRTC={override} could not be loaded:\n" + "\n".join(tried))
    raise NvrtcNotFound(
        'libnvrtc.so.13 not found. Install it with `pip install "nvidia-cuda-nvrtc>=13,<14"` '
        "(or point MINIDNI_NVRTC at a libnvrtc.so). Tried:\n" + "\n".join(tried)
    )


def _declare(lib):
    P, Pp, S, I, C = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
    CC = ctypes.POINTER(ctypes.c_char_p)
    signatures = {
        "nvrtcVersion": [ctypes.POINTER(I), ctypes.POINTER(I)],
        "nvrtcCreateProgram": [Pp, C, C, I, CC, CC],
        "nvrtcDestroyProgram": [Pp],
        "nvrtcCompileProgram": [P, I, CC],
        "nvrtcGetProgramLogSize": [P, ctypes.POINTER(S)],
        "nvrtcGetProgramLog": [P, C],
        "nvrtcGetPTXSize": [P, ctypes.POINTER(S)],
        "nvrtcGetPTX": [P, C],
        "nvrtcGetCUBINSize": [P, ctypes.POINTER(S)],
        "nvrtcGetCUBIN": [P, C],
    }
    for fname, argtypes in signatures.items():
        getattr(lib, fname).argtypes = argtypes
        getattr(lib, fname).restype = I
    lib.nvrtcGetErrorString.argtypes, lib.nvrtcGetErrorString.restype = [I], C


def _check(result, what):
    if result != 0:
        raise NvrtcError(f"{what} failed: {_load().nvrtcGetErrorString(result).decode()}")


def _strings(items):
    return (ctypes.c_char_p * len(items))(*[s.encode() for s in items])


def _read(lib, prog, size_fn, get_fn):
    size = ctypes.c_size_t()
    _check(getattr(lib, size_fn)(prog, ctypes.byref(size)), size_fn)
    buf = ctypes.create_string_buffer(size.value)
    _check(getattr(lib, get_fn)(prog, buf), get_fn)
    return buf.raw


def _compile_with_ctypes(source, name, options, headers, kind):
    lib = _load()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(
            ctypes.byref(prog),
            source.encode(),
            name.encode(),
            len(headers),
            _strings(list(headers.values())) if headers else None,
            _strings(list(headers.keys())) if headers else None,
        ),
        "nvrtcCreateProgram",
    )
    try:
        status = lib.nvrtcCompileProgram(prog, len(options), _strings(options))
        log = _read(lib, prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").rstrip(b"\0").decode(errors="replace")
        if status == 6:  # NVRTC_ERROR_COMPILATION: the source is wrong, so the log is the message
            raise NvrtcCompileError(name, log, options)
        if status != 0:  # e.g. an unknown option: NVRTC explains it in the log
            raise NvrtcError(f"nvrtcCompileProgram({name}) failed: {lib.nvrtcGetErrorString(status).decode()}\n{log}")
        if kind == "cubin":
            code = _read(lib, prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        else:
            code = _read(lib, prog, "nvrtcGetPTXSize", "nvrtcGetPTX").rstrip(b"\0")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return code, log


# --- 3. compiling --------------------------------------------------------------------------------------------

VIAS = ("ctypes", "cupy")


def version(via="ctypes"):
    """NVRTC's (major, minor), e.g. (13, 0), from the library that `via` reaches."""
    if via == "cupy":
        from cupy.cuda import nvrtc as cupy_nvrtc

        return tuple(cupy_nvrtc.getVersion())
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_load().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def compile(
    source, name="kernel.cu", arch="sm_80", options=(), include_dirs=(), headers=None, report=False, via="ctypes"
):
    """Compile CUDA C++ source exactly as `cupy.RawModule(code=source, options=(-I<dir>..., *options))` would on a
    GPU that CuPy compiles for `arch`: `sm_XX` gives a cubin, `compute_XX` gives PTX.

    The options are cupy_options(...). report=True adds --ptxas-options=-v to the caller's options, which makes the
    log carry ptxas' resource report (cubin targets only: for PTX, ptxas does not run). headers maps include names
    to their text (in-memory headers). via: "ctypes" (the nvidia-cuda-nvrtc wheel) or "cupy" (CuPy's binding, the
    calls CuPy makes; it returns the cubin that CuPy loads, one byte shorter). Raises NvrtcCompileError with NVRTC's
    log when the source does not compile.
    """
    if not re.fullmatch(r"(sm|compute)_\d+[af]?", arch):
        raise ValueError(f"arch must look like sm_80 or compute_75, got {arch!r}")
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, got {via!r}")
    kind = "cubin" if arch.startswith("sm_") else "ptx"
    caller = [*(f"-I{d}" for d in include_dirs), *options]
    if report and kind == "cubin":
        caller.append("--ptxas-options=-v")
    opts = list(cupy_options(caller, arch, nvrtc_version=version(via)))
    compile_program = _compile_with_cupy if via == "cupy" else _compile_with_ctypes
    # NVRTC looks for a quoted #include first in the folder of the program's name, and a bare name means the
    # current directory. CuPy names the program after a file in a fresh temporary folder; so does this, so that a
    # stray tiles.cuh wherever Python was started cannot shadow the kernels' own.
    with tempfile.TemporaryDirectory(prefix="minidni-nvrtc-") as folder:
        try:
            code, log = compile_program(source, os.path.join(folder, name), opts, dict(headers or {}), kind)
        except NvrtcCompileError as e:  # messages name the file as the caller does, without the temporary folder
            raise NvrtcCompileError(name, e.log.replace(folder + os.sep, ""), opts) from None
    return CompileResult(code=code, kind=kind, log=log.replace(folder + os.sep, ""), options=tuple(opts))


# --- reading ptxas' resource report --------------------------------------------------------------------------
# With --ptxas-options=-v the log holds, per function (entry functions first, called __noinline__ functions after):
#   ptxas info    : Compiling entry function 'add_forward_v1' for 'sm_80'
#   ptxas info    : Function properties for add_forward_v1
#   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 10 registers, used 0 barriers, 1024 bytes smem, 372 bytes cmem[0]
# Names are as ptxas sees them: extern "C" kernels keep their names, everything else stays mangled.

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_NUMBERS = {
    "barriers": re.compile(r"used (\d+) barriers"),
    "shared_bytes": re.compile(r"(\d+) bytes smem"),
    "cumulative_stack": re.compile(r"(\d+) bytes cumulative stack size"),
}
_CMEM = re.compile(r"(\d+) bytes cmem\[(\d+)\]")


def _blank(entry):
    return {
        "entry": entry,  # a __global__ function; False for a called (not inlined) device function
        "arch": None,
        "registers": None,  # reported for entry functions only
        "barriers": 0,
        "stack_frame": 0,
        "cumulative_stack": 0,
        "spill_stores": 0,
        "spill_loads": 0,
        "shared_bytes": 0,  # static __shared__ only; dynamic shared memory is chosen at launch
        "constant_bytes": {},  # bank -> bytes; cmem[0] holds the kernel parameters (not listed for sm_90)
    }


def parse_ptxas_report(log):
    """Turn ptxas' -v lines into {function_name: {"registers": ..., "spill_stores": ..., ...}}."""
    report, current = {}, None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = report.setdefault(m[1], _blank(True))
            current["entry"], current["arch"] = True, m[2]
        elif m := _PROPERTIES.search(line):
            current = report.setdefault(m[1], _blank(False))
        elif current is not None and (m := _FRAME.search(line)):
            current["stack_frame"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        elif current is not None and (m := _USED.search(line)):
            current["registers"] = int(m[1])
            for key, pattern in _NUMBERS.items():
                if n := pattern.search(line):
                    current[key] = int(n[1])
            current["constant_bytes"] = {int(bank): int(size) for size, bank in _CMEM.findall(line)}
    return report
