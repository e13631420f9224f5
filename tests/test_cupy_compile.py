"""minidni's kernels compile with exactly the options CuPy's RawModule gives NVRTC, checked against CuPy's own code.

No GPU is needed. Without a device, CuPy 14 still imports, builds a RawModule (which compiles lazily), assembles its
compiler options and drives NVRTC through its binding `cupy.cuda.nvrtc`. Only three steps of its compile path ask
for the device: its per-device memoisation (which asks the runtime for the current device), reading the device's
compute capability to choose the arch, and loading the compiled cubin (the driver). `HostCupy` below replaces
exactly those three and runs everything else of the installed CuPy - from `cupy.RawModule(...).module` down to
`nvrtc.compileProgram` - recording what reaches NVRTC. The tests compare that record with
`minidni.cuda.nvrtc.cupy_options`, so they fail when a new CuPy changes its list and when minidni's list drifts.

These tests skip, saying why, where CuPy cannot be imported; the test extra installs it wherever CuPy has wheels.
"""

import functools
import os
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_nvrtc import assert_resources_ok  # one spill check for every compile path

from minidni.cuda import loader, nvrtc, report

CUPY_MISSING = nvrtc.cupy_unavailable_reason()
pytestmark = pytest.mark.skipif(CUPY_MISSING is not None, reason=str(CUPY_MISSING))

KERNEL_STEMS = [path.stem for path in loader.kernel_files()]
CUBIN_ARCHS = ("sm_80", "sm_90")  # as tests/test_nvrtc.py: A100 and H100, with ptxas' resource report


# --- CuPy's compile path, with its three device steps replaced -----------------------------------------------


class HostCupy:
    """The installed CuPy's RawModule compile path, runnable without a device.

    compute_capability: what the replaced device reports (CuPy still clamps it and picks sm_/compute_ itself).
    environ: CUPY_* variables to compile under. The compiled cubins go to a fresh disk cache in cache_dir, as CuPy's
    default cache would, so a test can also see whether CuPy compiled or loaded a cached module.
    """

    def __init__(self, monkeypatch, cache_dir, compute_capability="90", environ=None):
        from cupy._core import raw
        from cupy.cuda import compiler, function
        from cupy.cuda._compiler_cache import DiskKernelCacheBackend

        self.compiles = []  # (source, options) of every program CuPy hands NVRTC, in order
        self.cache_dir = cache_dir

        for name, value in (environ or {}).items():
            monkeypatch.setenv(name, value)
        # CuPy reads these two when cupy.cuda.compiler is imported: read them again under this environment
        monkeypatch.setattr(compiler, "_use_ptx", compiler._get_bool_env_variable(nvrtc.ENV_PTX, False))
        monkeypatch.setattr(compiler, "_use_pch", compiler._get_bool_env_variable(nvrtc.ENV_PCH, False))

        # device step 1: memoize(for_each_device=True) asks the runtime for the current device; call the functions
        # it wraps directly (functools.wraps keeps them as __wrapped__)
        memoized = ((raw, "_get_raw_module"), (compiler, "_get_arch"), (compiler, "_get_arch_for_options_for_nvrtc"))
        for module, name in memoized:
            monkeypatch.setattr(module, name, getattr(module, name).__wrapped__)
        # device step 2: the device's compute capability (compiler._get_arch reads device.Device().compute_capability)
        device = types.SimpleNamespace(compute_capability=str(compute_capability))
        monkeypatch.setattr(compiler, "device", types.SimpleNamespace(Device=lambda: device))

        # device step 3: Module.load hands the cubin to the driver; keep it instead (a subclass, because
        # core.compile_with_cache is declared to return a cupy.cuda.function.Module)
        class HostModule(function.Module):
            def load(self, cubin):
                self.cubin = cubin

        host_function = types.SimpleNamespace(Module=HostModule, LinkState=function.LinkState)
        monkeypatch.setattr(compiler, "function", host_function)
        monkeypatch.setattr(compiler, "_kernel_cache_backend", DiskKernelCacheBackend(str(cache_dir)))

        real_compile = compiler._NVRTCProgram.compile

        def recording_compile(program, options=(), log_stream=None):
            self.compiles.append((program.src, tuple(options)))
            return real_compile(program, options, log_stream)

        monkeypatch.setattr(compiler._NVRTCProgram, "compile", recording_compile)

    def options_for(self, code):
        """The option lists NVRTC was given for this source (CuPy also compiles an empty file, to read NVRTC's
        version banner for its cache key; that one is not counted)."""
        return [options for source, options in self.compiles if source == code]

    def cached_modules(self):
        return sorted(p.name for p in self.cache_dir.iterdir() if p.suffix == ".cubin")


@pytest.fixture
def host_cupy(monkeypatch, tmp_path):
    """HostCupy(compute_capability="90", environ=None) -> a HostCupy installed for this test."""
    return functools.partial(HostCupy, monkeypatch, tmp_path / "cupy-kernel-cache")


def assert_same_options(cupy_gave, minidni_lists):
    """The two lists are equal, item for item and in order; the message shows where they part."""
    cupy_gave, minidni_lists = list(cupy_gave), list(minidni_lists)
    if cupy_gave != minidni_lists:
        first = next((i for i, (a, b) in enumerate(zip(cupy_gave, minidni_lists)) if a != b), None)
        first = min(len(cupy_gave), len(minidni_lists)) if first is None else first
        raise AssertionError(
            f"CuPy {nvrtc.CUPY_VERSION}'s option list and minidni.cuda.nvrtc.cupy_options differ from item {first}:\n"
            f"  CuPy gave NVRTC: {cupy_gave[first:]}\n  minidni lists:   {minidni_lists[first:]}\n"
            "Read the installed cupy/cuda/compiler.py and cupy/_core/core.pyx (assemble_cupy_compiler_options) and "
            "update cupy_options to match."
        )


# --- the option list ---------------------------------------------------------------------------------------


def test_cupy_assembles_the_options_minidni_lists():
    # assemble_cupy_compiler_options is a cpdef, callable from Python without a device: the include paths, --std
    from cupy._core.core import assemble_cupy_compiler_options

    for options in (loader.include_options(), (*loader.include_options(), "--std=c++20")):
        ours = nvrtc.cupy_options(options, "sm_90")
        assert_same_options(assemble_cupy_compiler_options(tuple(options)), ours[: ours.index("-ftz=true")])


# (environment, compute capability the device reports, what CuPy must choose): the default, a clamped future GPU
# and the three variables CuPy reads. CUPY_NVRTC_USE_PCH is off unless set: CuPy 14.2 does not add --pch by default.
VARIANTS = {
    "default-sm90": ({}, "90", "sm_90"),
    "default-sm75": ({}, "75", "sm_75"),
    "newer-than-nvrtc": ({}, "130", "sm_121"),
    "ptx": ({nvrtc.ENV_PTX: "1"}, "80", "compute_80"),
    "pch": ({nvrtc.ENV_PCH: "1"}, "80", "sm_80"),
    "debug": ({nvrtc.ENV_DEBUG: "1"}, "80", "sm_80"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_raw_module_hands_nvrtc_exactly_cupy_options(variant, host_cupy):
    import cupy

    environ, compute_capability, arch = VARIANTS[variant]
    host = host_cupy(compute_capability, environ)
    code, options = loader.module_source("optim"), loader.include_options()  # what Kernels("cupy") builds
    module = cupy.RawModule(code=code, options=options).module  # CuPy's own path, down to NVRTC
    assert nvrtc.cupy_arch(compute_capability, environ=environ) == arch
    (cupy_gave,) = host.options_for(code)
    assert_same_options(cupy_gave, nvrtc.cupy_options(options, arch, environ=environ))
    # and minidni's compile of the same text gives the very bytes CuPy would load (debug builds record the
    # program's temporary path, so two of them never match byte for byte)
    ours = nvrtc.compile(code, name="optim.cu", arch=arch, options=options, via="cupy")
    assert module.cubin == ours.code or variant == "debug"


def test_a_changed_cupy_option_fails_the_comparison(host_cupy, monkeypatch):
    # The comparison itself can fail: let "CuPy" add one option, as a new release might.
    import cupy
    from cupy.cuda import compiler

    host = host_cupy("90")
    real = compiler._compile_with_cache_cuda

    def compile_with_one_more_option(source, options, *args, **kwargs):
        return real(source, options + ("-lineinfo",), *args, **kwargs)

    monkeypatch.setattr(compiler, "_compile_with_cache_cuda", compile_with_one_more_option)
    code, options = loader.module_source("optim"), loader.include_options()
    cupy.RawModule(code=code, options=options).module
    (cupy_gave,) = host.options_for(code)
    with pytest.raises(AssertionError, match="differ from item"):
        assert_same_options(cupy_gave, nvrtc.cupy_options(options, "sm_90"))


def test_without_cupy_only_its_include_paths_are_missing_and_no_kernel_needs_them(monkeypatch):
    # Where CuPy is not installed its include folders are unknown and left out; minidni's kernels include only
    # files of their own folder, so the ctypes gate there builds the same cubin as here.
    import importlib.util

    path, arch = loader.kernel_dir() / "sg_predict.cu", "sm_80"
    here = nvrtc.compile(path.read_text(), name=path.name, arch=arch, include_dirs=[path.parent])
    find_include_options = nvrtc.cupy_include_options
    monkeypatch.setattr(nvrtc, "cupy_include_options", lambda: ((), ()))  # as on a machine without CuPy
    without = nvrtc.compile(path.read_text(), name=path.name, arch=arch, include_dirs=[path.parent])
    missing = [o for o in here.options if o not in without.options]
    assert missing and all(o.startswith("-I") for o in missing), missing  # only CuPy's include paths are missing
    assert without.code == here.code
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # and that is what finding no CuPy gives
    assert find_include_options.__wrapped__() == ((), ())


# --- every kernel file, through CuPy's binding --------------------------------------------------------------


def _compile_as_cupy(stem, arch):
    module = loader.Kernels("cupy").module(stem)  # a cupy.RawModule: constructed lazily, no device touched
    result = nvrtc.compile(module.code, name=f"{stem}.cu", arch=arch, options=module.options, report=True, via="cupy")
    return module, result


@functools.cache
def compiled():
    """Every (file, arch) compile at once, as tests/test_nvrtc.py does: CuPy's binding releases the GIL in NVRTC."""
    pool = ThreadPoolExecutor(os.cpu_count())
    return {(s, a): pool.submit(_compile_as_cupy, s, a) for s in KERNEL_STEMS for a in CUBIN_ARCHS}


@pytest.mark.parametrize("arch", CUBIN_ARCHS)
@pytest.mark.parametrize("stem", KERNEL_STEMS)
def test_kernel_compiles_through_cupys_binding_as_loaded_by_cupy(stem, arch):
    module, result = compiled()[stem, arch].result()
    assert module.code == loader.module_source(stem) and module.options == loader.include_options()
    declared = report.extern_c_kernels(loader.kernel_source(stem))
    assert_resources_ok(nvrtc.parse_ptxas_report(result.log), declared, f"{stem}.cu [{arch}, via CuPy]")
    # the ctypes gate of tests/test_nvrtc.py compiled the same bytes (CuPy's binding drops the cubin's last byte)
    gate, _ = report.compile_with_report(loader.kernel_dir() / f"{stem}.cu", arch)
    assert gate.code[:-1] == result.code


# --- where CuPy stops without a device (docs/testing.md quotes this) -----------------------------------------


def test_what_cupy_can_and_cannot_do_without_a_device():
    import cupy
    from cupy._core.core import assemble_cupy_compiler_options
    from cupy.cuda import nvrtc as cupy_nvrtc
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    if cupy.is_available():
        pytest.skip("this machine has a GPU: the device-less behaviour is not observable here")
    assert cupy_nvrtc.getVersion() == nvrtc.version()  # the binding works, and finds the same NVRTC
    assert assemble_cupy_compiler_options(())  # so does assembling the options
    module = cupy.RawModule(code=loader.module_source("optim"), options=loader.include_options())
    assert module.code.startswith("// minidni kernel optim.cu")  # constructed: compiling waits for first use
    for needs_a_device in (lambda: module.get_function("sgd_step_v1"), lambda: cupy.zeros(1)):
        with pytest.raises(CUDARuntimeError, match="cudaErrorInsufficientDriver"):
            needs_a_device()
