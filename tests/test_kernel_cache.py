"""Compiled kernels cannot go stale: an edited header rebuilds every kernel that includes it, on both targets.

Both caches are keyed on what the compiler reads. The emulator's .so cache hashes the source and every header it
includes; CuPy's cache (~/.cupy/kernel_cache) hashes the source text it is given, so minidni gives it a text whose
first line names each header's hash (loader.module_source). Each test edits a header in a copy of the kernels
folder - doubling the inner product of tiles.cuh, which every tiled GEMM uses - and checks that the result changes.
"""

import shutil

import numpy as np
import pytest
from test_cupy_compile import host_cupy  # noqa: F401 - a fixture: CuPy's own compile path, run without a device

from minidni.cuda import includes, loader, nvrtc
from minidni.cuda.emulator import EmulatedModule, emulator_available, unavailable_reason

CUPY_MISSING = nvrtc.cupy_unavailable_reason()
needs_cupy = pytest.mark.skipif(CUPY_MISSING is not None, reason=str(CUPY_MISSING))
needs_emulator = pytest.mark.skipif(
    not emulator_available(), reason=f"CUDA emulator unavailable: {unavailable_reason()}"
)

PRODUCT = "acc[i][j] += a[i] * b[j];"  # the multiply-add of tile_product in tiles.cuh


@pytest.fixture
def kernels_copy(tmp_path, monkeypatch):
    """A copy of the shipped kernels folder, which the loader then reads instead (kernel_dir() is where every
    loader function looks), so a test can edit headers freely."""
    folder = tmp_path / "kernels"
    shutil.copytree(loader.kernel_dir(), folder)
    monkeypatch.setattr(loader, "kernel_dir", lambda: folder)
    return folder


def double_the_product(folder):
    """Edit tiles.cuh so that every tiled product counts each term twice."""
    path = folder / "tiles.cuh"
    text = path.read_text()
    assert text.count(PRODUCT) == 1, "tiles.cuh changed: update PRODUCT"
    path.write_text(text.replace(PRODUCT, PRODUCT.replace("+= a[i]", "+= 2.0f * a[i]")))


# --- which files a kernel depends on -------------------------------------------------------------------------


def test_included_headers_follow_includes_through_headers(kernels_copy):
    found = includes.included_headers(loader.kernel_source("linear_forward"), [kernels_copy])
    assert [p.name for p in found] == ["tiles.cuh", "common.cuh"]  # common.cuh is included by tiles.cuh
    assert [p.name for p in includes.included_headers(loader.kernel_source("batchnorm"), [kernels_copy])] == [
        "common.cuh"
    ]


def test_included_headers_handle_cycles_and_toolchain_headers(tmp_path):
    (tmp_path / "a.cuh").write_text('#pragma once\n#include "b.cuh"\n')
    (tmp_path / "b.cuh").write_text('#pragma once\n#include "a.cuh"\n  #  include "cuda_fp16.h"\n')
    source = '#include <cstdint>\n#include "a.cuh"\n// #include "b.cuh" in a comment is not an include\n'
    found = includes.included_headers(source, [tmp_path])
    assert [p.name for p in found] == ["a.cuh", "b.cuh"]  # each once; cuda_fp16.h is not ours, <cstdint> neither


def test_source_fingerprint_changes_with_any_included_file_and_only_those(kernels_copy):
    before = loader.source_fingerprint("linear_forward")
    (kernels_copy / "sg_predict.cu").write_text("// an unrelated kernel file changed\n")
    assert loader.source_fingerprint("linear_forward") == before
    with open(kernels_copy / "common.cuh", "a") as header:  # included only through tiles.cuh
        header.write("// a comment is enough: the compiler sees a different text\n")
    assert loader.source_fingerprint("linear_forward") != before


# --- the emulator ---------------------------------------------------------------------------------------------


def run_linear_forward_v2(module, x, W):
    """h = x W through the tiled linear_forward_v2 (no bias, identity activation)."""
    B, Din = x.shape
    Dout = W.shape[1]
    h = np.zeros((B, Dout), np.float32)
    args = (x, W, h, np.int32(B), np.int32(Din), np.int32(Dout), np.int32(0), np.int32(0))  # has_bias 0, identity
    module.get_function("linear_forward_v2")(((Dout + 15) // 16, (B + 15) // 16), (256,), args)
    return h


@needs_emulator
def test_emulator_rebuilds_when_a_header_changes(kernels_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_EMU_CACHE", str(tmp_path / "emu-cache"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(np.float32)  # (B, Din)
    W = rng.standard_normal((7, 3)).astype(np.float32)  # (Din, Dout)

    def build():  # the file as on disk, with the kernels folder on the include path: the emulator's own key
        return EmulatedModule(code=loader.kernel_source("linear_forward"), options=loader.include_options())

    before = build()
    np.testing.assert_allclose(run_linear_forward_v2(before, x, W), x @ W, rtol=1e-5, atol=1e-5)
    double_the_product(kernels_copy)
    after = build()
    assert after.library_path != before.library_path, "the emulator reused the module built from the old tiles.cuh"
    np.testing.assert_allclose(run_linear_forward_v2(after, x, W), 2 * (x @ W), rtol=1e-5, atol=1e-5)
    # and through the loader, as the fused step builds it
    h = run_linear_forward_v2(loader.Kernels("emulator").module("linear_forward"), x, W)
    np.testing.assert_allclose(h, 2 * (x @ W), rtol=1e-5, atol=1e-5)


# --- CuPy -----------------------------------------------------------------------------------------------------


@needs_cupy
def test_text_handed_to_cupy_changes_with_a_header_and_compiles(kernels_copy):
    def build_and_compile():
        module = loader.Kernels("cupy").module("linear_forward")  # a cupy.RawModule: compiling waits for first use
        # NVRTC, through CuPy's binding, compiles exactly the text and options the RawModule holds
        ptx = nvrtc.compile(module.code, "linear_forward.cu", "compute_80", module.options, via="cupy").code
        return module, ptx

    before, ptx_before = build_and_compile()
    double_the_product(kernels_copy)
    after, ptx_after = build_and_compile()
    assert before.code != after.code, "CuPy would load the kernel compiled from the old tiles.cuh from its cache"
    assert ptx_before != ptx_after  # the edit reached the compiler: the cache must not hide it
    source = loader.kernel_source("linear_forward")
    for module in (before, after):
        first, line, rest = module.code.split("\n", 2)
        assert first.startswith("// minidni kernel linear_forward.cu; headers: tiles.cuh@")
        assert line == '#line 1 "linear_forward.cu"' and rest == source  # the file itself, unchanged
        assert module.options == (f"-I{kernels_copy}",)


@needs_cupy
def test_cupy_compiles_again_after_a_header_change(kernels_copy, host_cupy):
    # CuPy's own RawModule path with its disk cache (tests/test_cupy_compile.py runs it without a device): the first
    # build compiles and stores a cubin; after the edit, a new build must compile again, not load the stored one.
    host = host_cupy("80")
    before = loader.Kernels("cupy").module("linear_forward").module
    double_the_product(kernels_copy)
    after = loader.Kernels("cupy").module("linear_forward").module
    assert len(host.cached_modules()) == 2, "CuPy found the old module in its cache and loaded it"
    assert after.cubin != before.cubin

