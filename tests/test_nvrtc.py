"""Every shipped kernel compiles under NVRTC exactly as CuPy will compile it on a GPU, and none of them spills.

No GPU is needed: NVRTC is a library (the `nvidia-cuda-nvrtc` wheel). These tests fail, not skip, when it is
missing, because NVRTC is the gate that catches what nvcc lets through (host-only macros such as INFINITY).
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from minidni.cuda import loader, nvrtc, report

KERNEL_FILES = report.kernel_files()
PTX_ARCHS = ("compute_75",)  # the oldest target CUDA 13 supports; PTX is what an unlisted GPU would JIT
CUBIN_ARCHS = ("sm_80", "sm_90")  # A100 and H100; ptxas runs, so these carry the resource report


def assert_resources_ok(resources, declared, where):
    """Every declared kernel has a ptxas entry, and no function (kernel or called helper) spills."""
    missing = [k for k in declared if k not in resources]
    assert not missing, f"{where}: no ptxas report for {missing}; reported: {sorted(resources)}"
    spilling = {
        name: (r["spill_stores"], r["spill_loads"])
        for name, r in resources.items()
        if r["spill_stores"] or r["spill_loads"]
    }
    assert not spilling, f"{where}: register spills (store bytes, load bytes): {spilling}"


def _compile(path, arch):
    if arch in CUBIN_ARCHS:
        return report.compile_with_report(path, arch)
    return nvrtc.compile(path.read_text(), name=path.name, arch=arch, include_dirs=[str(path.parent)]), {}


@functools.cache
def compiled():
    """Start every (file, arch) compile at once; each test waits for its own. NVRTC runs outside the GIL, so on a
    2-core machine this halves the file's run time. A compile error surfaces in the test of that file and arch."""
    pool = ThreadPoolExecutor(os.cpu_count())
    return {(p, a): pool.submit(_compile, p, a) for p in KERNEL_FILES for a in PTX_ARCHS + CUBIN_ARCHS}


# --- the shipped kernels ------------------------------------------------------------------------------------


def test_nvrtc_is_available():
    assert nvrtc.version() >= (13, 0)


def test_package_ships_kernels():
    assert KERNEL_FILES, f"no .cu files in {loader.kernel_dir()}"


@pytest.mark.parametrize("arch", PTX_ARCHS)
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_to_ptx(path, arch):
    result, _ = compiled()[path, arch].result()
    ptx = result.code.decode()
    for kernel in report.extern_c_kernels(path.read_text()):
        assert f".entry {kernel}(" in ptx, f"{path.name} [{arch}]: {kernel} is not an entry point in the PTX"


@pytest.mark.parametrize("arch", CUBIN_ARCHS)
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_to_cubin_without_spills(path, arch):
    declared = report.extern_c_kernels(path.read_text())
    assert declared, f'{path.name} declares no extern "C" __global__ kernels'
    result, resources = compiled()[path, arch].result()
    assert result.code[:4] == b"\x7fELF"
    assert_resources_ok(resources, declared, f"{path.name} [{arch}]")


# --- the gate itself can fail -------------------------------------------------------------------------------


def test_host_only_macro_is_rejected():
    # nvcc accepts INFINITY (it sees the host's math.h); NVRTC, and so CuPy on a GPU, does not.
    source = 'extern "C" __global__ void fill_inf(float* y) { y[0] = INFINITY; }'
    with pytest.raises(nvrtc.NvrtcCompileError) as error:
        nvrtc.compile(source, name="fill_inf.cu", arch="sm_80")
    assert 'identifier "INFINITY" is undefined' in str(error.value)
    assert "fill_inf.cu" in str(error.value)


# 64 accumulators live across a loop, under launch bounds that cap a thread at 32 registers: ptxas must spill.
SPILLING_KERNEL = """
extern "C" __global__ void __launch_bounds__(1024, 2) spill_forward_v1(const float* x, float* y, int n) {
    float acc[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) acc[j] = x[j * n + threadIdx.x];
    for (int it = 0; it < n; ++it) {
#pragma unroll
        for (int j = 0; j < 64; ++j) acc[j] = acc[j] * acc[(j + 1) & 63] + x[it];
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 64; ++j) s += acc[j] * (j + 1);
    y[threadIdx.x] = s;
}
"""


def test_spilling_kernel_fails_the_spill_check():
    result = nvrtc.compile(SPILLING_KERNEL, name="spill.cu", arch="sm_80", report=True)
    resources = nvrtc.parse_ptxas_report(result.log)
    assert resources["spill_forward_v1"]["spill_stores"] > 0
    assert resources["spill_forward_v1"]["stack_frame"] > 0
    with pytest.raises(AssertionError, match="register spills"):
        assert_resources_ok(resources, ["spill_forward_v1"], "spill.cu [sm_80]")


def test_missing_report_fails_the_check():
    with pytest.raises(AssertionError, match="no ptxas report"):
        assert_resources_ok({}, ["linear_forward_v1"], "linear_forward.cu [sm_80]")


# --- the pieces ---------------------------------------------------------------------------------------------

# Captured from NVRTC 13.5, sm_80: a kernel with static shared memory, a spilling one, a called __noinline__ helper.
CAPTURED_LOG = """\
ptxas info    : 0 bytes gmem, 256 bytes cmem[3]
ptxas info    : Compiling entry function 'spilly' for 'sm_80'
ptxas info    : Function properties for spilly
ptxas         .     400 bytes stack frame, 488 bytes spill stores, 488 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 400 bytes cumulative stack size, 372 bytes cmem[0]
ptxas info    : Compile time = 38.346 ms
ptxas info    : Function properties for _Z6helperPKfi
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'tile_v1' for 'sm_80'
ptxas info    : Function properties for tile_v1
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 1024 bytes smem, 368 bytes cmem[0]
ptxas info    : Compile time = 1.417 ms
"""


def test_parse_ptxas_report_on_a_captured_log():
    parsed = nvrtc.parse_ptxas_report(CAPTURED_LOG)
    assert set(parsed) == {"spilly", "_Z6helperPKfi", "tile_v1"}
    assert parsed["tile_v1"] == {
        "entry": True,
        "arch": "sm_80",
        "registers": 12,
        "barriers": 1,
        "stack_frame": 0,
        "cumulative_stack": 0,
        "spill_stores": 0,
        "spill_loads": 0,
        "shared_bytes": 1024,
        "constant_bytes": {0: 368},
    }
    spilly = parsed["spilly"]
    assert (spilly["registers"], spilly["spill_stores"], spilly["spill_loads"]) == (32, 488, 488)
    assert (spilly["stack_frame"], spilly["cumulative_stack"]) == (400, 400)
    assert parsed["_Z6helperPKfi"]["entry"] is False and parsed["_Z6helperPKfi"]["registers"] is None


def test_extern_c_kernels_finds_every_form():
    source = """
    // extern "C" __global__ void commented_out(float* y) {}
    extern "C" __global__ void plain_forward_v1(const float* x, float* y) {}
    extern "C" __global__ void __launch_bounds__(256, 2) bounded_forward_v2(float* y) {}
    extern "C" __device__ float not_a_kernel(float x) { return x; }
    __global__ void mangled_kernel(float* y) {}
    extern "C" {
    __global__ void in_block_backward_v1(float* dx) { if (dx) { dx[0] = 0.f; } }
    __device__ float helper(float x) { return x; }
    }
    """
    assert report.extern_c_kernels(source) == ["plain_forward_v1", "bounded_forward_v2", "in_block_backward_v1"]


def test_ptx_target_and_in_memory_headers():
    headers = {"scale.cuh": "__device__ inline float scale(float v) { return 2.f * v; }\n"}
    source = '#include "scale.cuh"\nextern "C" __global__ void scale_forward_v1(float* y) { y[0] = scale(y[0]); }\n'
    result = nvrtc.compile(source, name="scale.cu", arch="compute_75", headers=headers)
    assert result.kind == "ptx" and ".target sm_75" in result.code.decode()
    assert result.options == nvrtc.cupy_options((), "compute_75")  # CuPy's list, checked in tests/test_cupy_compile.py


def test_resource_table_rows_and_markdown():
    row = {"file": "a.cu", "kernel": "k_v1", "arch": "sm_80", "registers": 10, "shared_bytes": 0}
    rows = [{**row, "spill_stores": 0, "spill_loads": 0, "stack_frame": 0}]
    table = report.format_markdown(rows).splitlines()
    assert len(table) == 3 and table[2] == "| a.cu | `k_v1` | sm_80 | 10 | 0 | 0 | 0 | 0 |"


def test_missing_library_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(nvrtc, "_lib", None)
    monkeypatch.delenv("MINIDNI_NVRTC", raising=False)
    monkeypatch.setattr(nvrtc, "_candidates", lambda: iter(["/nonexistent/libnvrtc.so.13"]))
    with pytest.raises(nvrtc.NvrtcNotFound, match="pip install"):
        nvrtc.version()


def test_a_broken_override_is_not_silently_ignored(monkeypatch):
    monkeypatch.setattr(nvrtc, "_lib", None)
    monkeypatch.setenv("MINIDNI_NVRTC", "/nonexistent/libnvrtc.so.13")
    with pytest.raises(nvrtc.NvrtcNotFound, match="MINIDNI_NVRTC=/nonexistent"):
        nvrtc.version()


# --- CuPy's option list, modelled (tests/test_cupy_compile.py checks the model against CuPy's own code) -------

NO_CUPY_PATHS = ((), ())  # cupy_options' include paths, left out so these tests need no CuPy


def test_cupy_options_come_in_cupys_order():
    includes = (("-I/cupy/include/cupy/_cccl/cub",), ("-I/cupy/include", "-I/cuda/include"))
    options = nvrtc.cupy_options(["-I/kernels"], "sm_90", nvrtc_version=(13, 0), environ={}, includes=includes)
    assert options == (
        "-I/cupy/include/cupy/_cccl/cub",  # CuPy's bundled CCCL, searched first
        "-I/kernels",  # the caller's options
        "--std=c++17",
        "-I/cupy/include",
        "-I/cuda/include",
        "-ftz=true",
        "-arch=sm_90",
        "--device-as-default-execution-space",
    )


def test_cupy_options_follow_cupys_environment_variables():
    def options(environ, nvrtc_version=(13, 0), caller=()):
        return nvrtc.cupy_options(caller, "sm_80", nvrtc_version=nvrtc_version, environ=environ, includes=NO_CUPY_PATHS)

    assert options({})[-1] == "--device-as-default-execution-space"  # no --pch unless asked for
    assert options({nvrtc.ENV_PCH: "1"})[-1] == "--pch"
    assert "--pch" not in options({nvrtc.ENV_PCH: "1"}, nvrtc_version=(12, 6))  # NVRTC before 12.8 has none
    assert "--pch" not in options({nvrtc.ENV_PCH: "yes"})  # CuPy reads anything but an integer 1 as off
    debug = options({nvrtc.ENV_DEBUG: "1"})
    after_ftz = debug[debug.index("-ftz=true") :]
    assert after_ftz[:4] == ("-ftz=true", "--device-debug", "--generate-line-info", "-arch=sm_80")
    assert "--std=c++17" not in options({}, caller=["--std=c++20"])  # the caller's standard wins


def test_cupy_arch_clamps_to_nvrtc_and_honours_ptx():
    assert nvrtc.cupy_arch("90", (13, 0), {}) == "sm_90"
    assert nvrtc.cupy_arch("130", (13, 0), {}) == "sm_121"  # a GPU newer than NVRTC: its newest arch
    assert nvrtc.cupy_arch("100", (12, 4), {}) == "sm_90"
    assert nvrtc.cupy_arch("87", (12, 4), {}) == "sm_87"  # Jetson archs are never clamped
    assert nvrtc.cupy_arch("75", (13, 0), {nvrtc.ENV_PTX: "1"}) == "compute_75"


def test_compile_names_the_program_in_an_empty_folder(tmp_path, monkeypatch):
    # NVRTC looks for a quoted include next to the program's name first, and a bare name means the current
    # directory; like CuPy, compile() names the program inside a fresh temporary folder, so a stray header in the
    # working directory cannot replace the one on the include path.
    (tmp_path / "value.cuh").write_text("#define VALUE 1\n")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "value.cuh").write_text("#define VALUE 2\n")
    monkeypatch.chdir(tmp_path)
    source = '#include "value.cuh"\nextern "C" __global__ void value_v1(int* y) { y[0] = VALUE; }\n'
    ptx = nvrtc.compile(source, name="value.cu", arch="compute_75", include_dirs=[tmp_path / "inc"]).code.decode()
    assert "mov.u32 \t%r1, 2;" in ptx
