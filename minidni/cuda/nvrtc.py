"""NVRTC, the CUDA runtime compiler that CuPy uses, driven through ctypes so kernels can be compiled with no GPU.

On a GPU, CuPy hands each .cu file to NVRTC and loads the result. NVRTC itself needs no driver and no device, so
calling it here with CuPy's options gives the same accept/reject verdict and the same ptxas resource report
(registers, shared memory, spills) that a user's GPU would see. That makes it the compile gate for kernels/*.cu:
nvcc is not, because it sees host headers (it accepts `INFINITY`, which NVRTC rejects).

This module deliberately is not a loader or a launcher (see loader.py / the emulator): it returns bytes and a log,
and it wraps only the handful of NVRTC calls needed for that. The library comes from the `nvidia-cuda-nvrtc`
wheel (`pip install "nvidia-cuda-nvrtc>=13,<14"`), or from the path in $MINIDNI_NVRTC.
"""

import ctypes
import ctypes.util
import glob
import os
import re
import sys
from dataclasses import dataclass

# CuPy's default options for RawModule; the -arch flag is added per target.
CUPY_OPTIONS = ("--std=c++17", "-ftz=true", "--device-as-default-execution-space")


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


# --- finding and loading the library -------------------------------------------------------------------------


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


def version():
    """NVRTC's (major, minor), e.g. (13, 0)."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_load().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


# --- compiling -----------------------------------------------------------------------------------------------


def _strings(items):
    return (ctypes.c_char_p * len(items))(*[s.encode() for s in items])


def _read(lib, prog, size_fn, get_fn):
    size = ctypes.c_size_t()
    _check(getattr(lib, size_fn)(prog, ctypes.byref(size)), size_fn)
    buf = ctypes.create_string_buffer(size.value)
    _check(getattr(lib, get_fn)(prog, buf), get_fn)
    return buf.raw


def compile(source, name="kernel.cu", arch="sm_80", options=(), include_dirs=(), headers=None, report=False):
    """Compile CUDA C++ source as CuPy would: `sm_XX` gives a cubin, `compute_XX` gives PTX.

    include_dirs become -I options; headers maps include names to their text (in-memory headers).
    report=True adds --ptxas-options=-v, which makes the log carry ptxas' resource report (cubin targets only:
    for PTX, ptxas does not run). Raises NvrtcCompileError with NVRTC's log when the source does not compile.
    """
    if not re.fullmatch(r"(sm|compute)_\d+[af]?", arch):
        raise ValueError(f"arch must look like sm_80 or compute_75, got {arch!r}")
    kind = "cubin" if arch.startswith("sm_") else "ptx"
    opts = [*CUPY_OPTIONS, f"-arch={arch}", *[f"-I{d}" for d in include_dirs], *options]
    if report and kind == "cubin":
        opts.append("--ptxas-options=-v")
    headers = dict(headers or {})

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
        status = lib.nvrtcCompileProgram(prog, len(opts), _strings(opts))
        log = _read(lib, prog, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog").rstrip(b"\0").decode(errors="replace")
        if status == 6:  # NVRTC_ERROR_COMPILATION: the source is wrong, so the log is the message
            raise NvrtcCompileError(name, log, opts)
        if status != 0:  # e.g. an unknown option: NVRTC explains it in the log
            raise NvrtcError(f"nvrtcCompileProgram({name}) failed: {lib.nvrtcGetErrorString(status).decode()}\n{log}")
        if kind == "cubin":
            code = _read(lib, prog, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        else:
            code = _read(lib, prog, "nvrtcGetPTXSize", "nvrtcGetPTX").rstrip(b"\0")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return CompileResult(code=code, kind=kind, log=log, options=tuple(opts))


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
