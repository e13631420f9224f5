"""Tests for minidni.cuda.emulator: CUDA kernels run on the CPU, and the bugs a GPU hides become test failures.

Every kernel here is a small source string written for the test. Each behaviour is shown from both sides where
that is possible: a correct kernel matches NumPy, and the same kernel with a planted bug (a missing barrier, a
divergent shuffle, a Python int argument) fails in the way the emulator promises.
"""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minidni.cuda import emulator
from minidni.cuda.emulator import (
    DeadlockError,
    EmulatedModule,
    EmulatorError,
    LaunchError,
    emulator_available,
    unavailable_reason,
)

pytestmark = pytest.mark.skipif(not emulator_available(), reason=f"CUDA emulator unavailable: {unavailable_reason()}")

FULL = np.uint32(0xFFFFFFFF)


def line_of(source, marker):
    """The 1-based line of `marker` in a kernel source, as __LINE__ reports it."""
    return next(i for i, text in enumerate(source.splitlines(), 1) if marker in text)


# ----------------------------------------------------------------------------------------------------------------
# Barriers: a tiled matmul is right with both __syncthreads, and wrong without the second

MATMUL = r"""
#define TILE 16
#ifndef SECOND_SYNC
#define SECOND_SYNC __syncthreads()
#endif
extern "C" __global__ void matmul(const float* __restrict__ A, const float* __restrict__ B, float* C,
                                  int M, int N, int K) {
    __shared__ float As[TILE][TILE];
    __shared__ float Bs[TILE][TILE];
    int tx = threadIdx.x, ty = threadIdx.y;
    int row = blockIdx.y * TILE + ty, col = blockIdx.x * TILE + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[row * K + k0 + tx] : 0.0f;
        Bs[ty][tx] = (k0 + ty < K && col < N) ? B[(k0 + ty) * N + col] : 0.0f;
        __syncthreads();  // the tiles are loaded
        #pragma unroll
        for (int k = 0; k < TILE; ++k) acc += As[ty][k] * Bs[k][tx];
        SECOND_SYNC;  // everyone is done with the tiles before they are overwritten
    }
    if (row < M && col < N) C[row * N + col] = acc;
}
"""


def run_matmul(module, A, B):
    M, K = A.shape
    N = B.shape[1]
    C = np.zeros((M, N), np.float32)
    grid = ((N + 15) // 16, (M + 15) // 16)
    module.get_function("matmul")(grid, (16, 16), (A, B, C, np.int32(M), np.int32(N), np.int32(K)))
    return C


def test_tiled_matmul_matches_numpy_on_odd_shapes():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((37, 45)).astype(np.float32)
    B = rng.standard_normal((45, 29)).astype(np.float32)
    C = run_matmul(EmulatedModule(code=MATMUL, name="matmul"), A, B)
    np.testing.assert_allclose(C, A @ B, rtol=1e-5, atol=1e-4)


def test_missing_second_syncthreads_gives_a_wrong_matmul():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((37, 45)).astype(np.float32)
    B = rng.standard_normal((45, 29)).astype(np.float32)
    broken = EmulatedModule(code=MATMUL, options=("-DSECOND_SYNC=",), name="matmul_no_second_sync")
    C = run_matmul(broken, A, B)
    assert not np.allclose(C, A @ B, rtol=1e-3, atol=1e-3), "the emulator hid a missing __syncthreads"


# ----------------------------------------------------------------------------------------------------------------
# Warps: shuffles, and why legacy warp-synchronous code needs __syncwarp

WARP = r"""
extern "C" __global__ void warp_sum(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffff, v, offset);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, v);
}

// The pre-Volta idiom: lanes of a warp were assumed to run in lockstep, so no synchronisation between steps.
extern "C" __global__ void block_sum_legacy(const float* x, float* out) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    if (t < 32) {
        volatile float* vs = s;
        vs[t] += vs[t + 32]; vs[t] += vs[t + 16]; vs[t] += vs[t + 8];
        vs[t] += vs[t + 4]; vs[t] += vs[t + 2]; vs[t] += vs[t + 1];
    }
    if (t == 0) out[0] = s[0];
}

// The same reduction made correct for independent thread scheduling: read, __syncwarp, write, __syncwarp.
extern "C" __global__ void block_sum_syncwarp(const float* x, float* out) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    if (t < 32) {
        float v = s[t] + s[t + 32];
        __syncwarp();
        s[t] = v;
        __syncwarp();
        for (int offset = 16; offset > 0; offset >>= 1) {
            v += s[t + offset];
            __syncwarp();
            s[t] = v;
            __syncwarp();
        }
    }
    if (t == 0) out[0] = s[0];
}

// Every flavour of shuffle, for each width, from value = lane id; plus the votes.
extern "C" __global__ void shuffles(int* out, int width, int arg) {
    int lane = threadIdx.x;
    out[0 * 32 + lane] = __shfl_sync(0xffffffff, lane, arg, width);
    out[1 * 32 + lane] = __shfl_up_sync(0xffffffff, lane, arg, width);
    out[2 * 32 + lane] = __shfl_down_sync(0xffffffff, lane, arg, width);
    out[3 * 32 + lane] = __shfl_xor_sync(0xffffffff, lane, arg, width);
    out[4 * 32 + lane] = __ballot_sync(0xffffffff, lane % 3 == 0);
    out[5 * 32 + lane] = __all_sync(0xffffffff, lane < arg);
    out[6 * 32 + lane] = __any_sync(0xffffffff, lane == arg);
}
"""


@pytest.fixture(scope="module")
def warp_module():
    return EmulatedModule(code=WARP, name="warp")


def test_warp_shuffle_reduction_matches_numpy(warp_module):
    x = np.random.default_rng(1).standard_normal(200).astype(np.float32)
    out = np.zeros(1, np.float32)
    warp_module.get_function("warp_sum")((2,), (128,), (x, out, np.int32(x.size)))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)


def test_legacy_warp_synchronous_reduction_is_wrong_and_syncwarp_fixes_it(warp_module):
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    out = np.zeros(1, np.float32)
    warp_module.get_function("block_sum_legacy")(1, 64, (x, out))
    assert not np.isclose(out[0], x.sum(), rtol=1e-4), "lockstep was assumed and the emulator went along with it"
    warp_module.get_function("block_sum_syncwarp")(1, 64, (x, out))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)


def expected_source_lanes(kind, arg, width):
    """CUDA's documented shuffle rules, written independently of the emulator's PTX-style formula."""
    lanes = np.arange(32)
    start = lanes // width * width  # first lane of each lane's segment
    if kind == "idx":
        return start + arg % width
    if kind == "up":
        return np.where(lanes - start >= arg, lanes - arg, lanes)
    if kind == "down":
        return np.where(lanes - start + arg < width, lanes + arg, lanes)
    partner = lanes ^ arg  # xor: earlier segments are readable, later ones give the lane's own value
    return np.where(partner < start + width, partner, lanes)


@pytest.mark.parametrize("width,arg", [(32, 1), (32, 5), (16, 3), (8, 2), (8, 12), (4, 1)])
def test_shuffle_and_vote_semantics(warp_module, width, arg):
    out = np.zeros((7, 32), np.int32)
    warp_module.get_function("shuffles")(1, 32, (out, np.int32(width), np.int32(arg)))
    for row, kind in enumerate(("idx", "up", "down", "xor")):
        np.testing.assert_array_equal(out[row], expected_source_lanes(kind, arg, width), err_msg=kind)
    assert (out[4].view(np.uint32) == sum(1 << lane for lane in range(0, 32, 3))).all()
    assert (out[5] == int(arg >= 32)).all()
    assert (out[6] == 1).all()


# ----------------------------------------------------------------------------------------------------------------
# Planted synchronisation bugs are reported, naming threads and lines

BUGS = r"""
extern "C" __global__ void divergent_barrier(float* y) {
    if (threadIdx.x < 16) {
        __syncthreads();  // barrier A
    } else {
        __syncthreads();  // barrier B
    }
    y[threadIdx.x] = 1.0f;
}

extern "C" __global__ void divergent_shuffle(float* y) {
    float v = threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_down_sync(0xffffffff, v, 1);  // shuffle A
    else v = __shfl_down_sync(0xffffffff, v, 2);                   // shuffle B
    y[threadIdx.x] = v;
}

extern "C" __global__ void full_mask_shuffle(float* y) {
    float v = __shfl_down_sync(0xffffffff, (float)threadIdx.x, 1);  // full mask
    y[threadIdx.x] = v;
}

extern "C" __global__ void shuffle_after_exit(float* y) {
    if (threadIdx.x >= 8) return;
    y[threadIdx.x] = __shfl_down_sync(0xffffffff, (float)threadIdx.x, 1);  // lanes 8-31 are gone
}

extern "C" __global__ void shuffle_vs_barrier(float* y) {
    float v = threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(0x3, v, 1);  // waits for lane 1 ...
    __syncthreads();                                    // ... which waits here
    y[threadIdx.x] = v;
}

extern "C" __global__ void early_return(const float* x, float* y, int n) {
    __shared__ float s[64];
    int t = threadIdx.x;
    if (t >= n) return;  // these threads never reach the barrier: fine on sm_70+
    s[t] = x[t];
    __syncthreads();
    y[t] = s[n - 1 - t];
}

extern "C" __global__ void device_assert(const float* x) {
    assert(x[threadIdx.x] >= 0.0f);
}
"""


@pytest.fixture(scope="module")
def bugs():
    return EmulatedModule(code=BUGS, name="bugs")


def test_divergent_syncthreads_names_threads_and_lines(bugs):
    y = np.zeros(32, np.float32)
    with pytest.raises(DeadlockError, match="divergent __syncthreads") as info:
        bugs.get_function("divergent_barrier")(1, 32, (y,))
    message = str(info.value)
    assert f"threads 0-15 wait at __syncthreads() at bugs.cu:{line_of(BUGS, 'barrier A')}" in message
    assert f"threads 16-31 wait at __syncthreads() at bugs.cu:{line_of(BUGS, 'barrier B')}" in message
    assert "kernel divergent_barrier" in message


def test_divergent_shuffle_is_a_deadlock(bugs):
    with pytest.raises(DeadlockError, match="divergent warp collective") as info:
        bugs.get_function("divergent_shuffle")(1, 32, (np.zeros(32, np.float32),))
    assert f"threads 0-15 wait at __shfl_down_sync(mask 0xffffffff) at bugs.cu:{line_of(BUGS, 'shuffle A')}" in str(
        info.value
    )
    assert f"bugs.cu:{line_of(BUGS, 'shuffle B')}" in str(info.value)


def test_full_mask_shuffle_in_a_partial_warp_is_reported(bugs):
    with pytest.raises(DeadlockError, match=r"names lanes 16-31 of warp 1, which do not exist") as info:
        bugs.get_function("full_mask_shuffle")(1, 48, (np.zeros(48, np.float32),))
    assert f"bugs.cu:{line_of(BUGS, 'full mask')}" in str(info.value)
    bugs.get_function("full_mask_shuffle")(1, 64, (np.zeros(64, np.float32),))  # two whole warps are fine


def test_mask_naming_an_exited_lane_is_reported(bugs):
    with pytest.raises(DeadlockError, match="lane 8 named in the mask has already exited"):
        bugs.get_function("shuffle_after_exit")(1, 32, (np.zeros(32, np.float32),))


def test_deadlock_lists_what_each_thread_waits_for(bugs):
    with pytest.raises(DeadlockError, match="no thread can run") as info:
        bugs.get_function("shuffle_vs_barrier")(1, 32, (np.zeros(32, np.float32),))
    message = str(info.value)
    assert "thread 0 waits at __shfl_sync(mask 0x00000003)" in message
    assert "threads 1-31 wait at __syncthreads()" in message


def test_threads_returning_before_a_barrier_do_not_deadlock(bugs):
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    bugs.get_function("early_return")(1, 64, (x, y, np.int32(40)))
    np.testing.assert_array_equal(y[:40], x[:40][::-1])
    assert (y[40:] == 0).all()


def test_device_assert_raises_instead_of_aborting(bugs):
    x = np.ones(32, np.float32)
    x[7] = -1
    with pytest.raises(EmulatorError, match=r"thread \(7,0,0\).*assert\(x\[threadIdx.x\] >= 0.0f\) failed"):
        bugs.get_function("device_assert")(1, 32, (x,))


def test_emulator_still_works_after_errors(bugs):
    for _ in range(3):
        with pytest.raises(DeadlockError):
            bugs.get_function("divergent_barrier")(1, 32, (np.zeros(32, np.float32),))
        with pytest.raises(DeadlockError):
            bugs.get_function("full_mask_shuffle")(1, 48, (np.zeros(48, np.float32),))
    test_threads_returning_before_a_barrier_do_not_deadlock(bugs)


# ----------------------------------------------------------------------------------------------------------------
# Arguments are checked the way a GPU needs them

ARGS = r"""
extern "C" __global__ void axpy(float a, const float* __restrict__ x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}
"""


@pytest.fixture(scope="module")
def axpy():
    return EmulatedModule(code=ARGS, name="args").get_function("axpy")


def test_correct_arguments_run(axpy):
    x = np.arange(10, dtype=np.float32)
    y = np.ones(10, np.float32)
    axpy(1, 32, (np.float32(2), x, y, np.int32(10)))
    np.testing.assert_array_equal(y, 1 + 2 * x)


@pytest.mark.parametrize(
    "args,match",
    [
        (
            (np.float32(2), "x", "y", 10),
            r"parameter n is `int`: pass np.int32\(...\); a Python int reaches a GPU kernel as int64",
        ),
        (
            (2.0, "x", "y", np.int32(10)),
            r"parameter a is `float`: pass np.float32\(...\); a Python float reaches .* as float64",
        ),
        ((np.float32(2), "x", "y", np.int64(10)), r"parameter n is `int`: pass np.int32\(...\), got int64"),
        (
            (np.float32(2), "x64", "y", np.int32(10)),
            r"parameter x is `const float\* __restrict__`: needs an array of dtype float32, got float64",
        ),
        ((np.float32(2), "x", "strided", np.int32(10)), r"parameter y is `float\*`: the array must be C-contiguous"),
        ((np.float32(2), "x", "y"), r"takes 4 arguments .* got 3"),
        ((np.float32(2), "x", [1.0] * 10, np.int32(10)), r"parameter y is `float\*`: pass a NumPy array, got list"),
    ],
)
def test_wrong_arguments_are_rejected(axpy, args, match):
    arrays = {
        "x": np.zeros(10, np.float32),
        "y": np.zeros(10, np.float32),
        "x64": np.zeros(10, np.float64),
        "strided": np.zeros(20, np.float32)[::2],
    }
    args = tuple(arrays[a] if isinstance(a, str) else a for a in args)
    with pytest.raises(LaunchError, match=match) as info:
        axpy(1, 32, args)
    assert str(info.value).startswith("kernel axpy")


@pytest.mark.parametrize(
    "grid,block,match",
    [
        (1, 1025, r"block.x = 1025 is outside 1..1024"),
        (1, (32, 33), "1056 threads; at most 1024"),
        (1, (1, 1, 65), r"block.z = 65 is outside 1..64"),
        (0, 32, r"grid.x = 0 is outside"),
        ((1, 1, 1, 1), 32, "tuple of 1 to 3 ints"),
    ],
)
def test_bad_launch_shapes_are_rejected(axpy, grid, block, match):
    args = (np.float32(1), np.zeros(4, np.float32), np.zeros(4, np.float32), np.int32(4))
    with pytest.raises(LaunchError, match=match):
        axpy(grid, block, args)


def test_launch_error_is_an_emulator_error():
    assert issubclass(LaunchError, EmulatorError) and issubclass(DeadlockError, EmulatorError)


# ----------------------------------------------------------------------------------------------------------------
# Dynamic shared memory: rewritten extern __shared__, poisoned with NaN, guarded by a canary

SHARED = r"""
extern __shared__ int counts[];  // at namespace scope, as CUDA allows

extern "C" __global__ void reverse(const float* x, float* y, int n) {
    extern __shared__ __align__(16) float smem[];
    int t = threadIdx.x;
    smem[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = smem[blockDim.x - 1 - t];
}

extern "C" __global__ void read_unwritten(const float* x, float* y) {
    extern __shared__ float smem[];
    int t = threadIdx.x;
    smem[t] = x[t];
    __syncthreads();
    y[t] = smem[t] + smem[t + blockDim.x];  // the second half was never written
}

extern "C" __global__ void count_parity(const int* x, int* out) {
    int t = threadIdx.x;
    if (t < 2) counts[t] = 0;
    __syncthreads();
    atomicAdd(&counts[x[t] & 1], 1);
    __syncthreads();
    if (t < 2) out[t] = counts[t];
}
"""


@pytest.fixture(scope="module")
def shared():
    return EmulatedModule(code=SHARED, name="shared")


def test_extern_shared_is_a_per_launch_buffer(shared):
    x = np.arange(3 * 64, dtype=np.float32)
    y = np.zeros_like(x)
    shared.get_function("reverse")(3, 64, (x, y, np.int32(x.size)), shared_mem=64 * 4)
    np.testing.assert_array_equal(y, x.reshape(3, 64)[:, ::-1].ravel())
    x = np.arange(32, dtype=np.int32)
    out = np.zeros(2, np.int32)
    shared.get_function("count_parity")(1, 32, (x, out), shared_mem=8)
    np.testing.assert_array_equal(out, [16, 16])


def test_too_small_shared_mem_is_caught_by_the_canary(shared):
    x = np.arange(64, dtype=np.float32)
    y = np.zeros_like(x)
    with pytest.raises(EmulatorError, match="wrote past the end of its dynamic shared memory of 252 bytes"):
        shared.get_function("reverse")(1, 64, (x, y, np.int32(64)), shared_mem=63 * 4)
    shared.get_function("reverse")(1, 64, (x, y, np.int32(64)), shared_mem=64 * 4)  # and the next launch works
    np.testing.assert_array_equal(y, x[::-1])


def test_unwritten_dynamic_shared_memory_reads_as_nan(shared):
    x = np.ones(32, np.float32)
    y = np.zeros(32, np.float32)
    shared.get_function("read_unwritten")(1, 32, (x, y), shared_mem=2 * 32 * 4)
    assert np.isnan(y).all()


# ----------------------------------------------------------------------------------------------------------------
# Indexing in 2-D and 3-D, and atomics across blocks

INDEXING = r"""
extern "C" __global__ void coordinates(int* out) {
    // out has shape (gz, gy, gx, bz, by, bx, 6): each thread writes its own indices
    int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 6;
    o[0] = blockIdx.z; o[1] = blockIdx.y; o[2] = blockIdx.x;
    o[3] = threadIdx.z; o[4] = threadIdx.y; o[5] = threadIdx.x;
}

extern "C" __global__ void histogram(const int* x, int n, int* counts, float* total) {
    int i = (blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&counts[x[i]], 1);
    atomicAdd(total, (float)x[i]);
}
"""


@pytest.fixture(scope="module")
def indexing():
    return EmulatedModule(code=INDEXING, name="indexing")


@pytest.mark.parametrize("grid,block", [((3, 2), (4, 5)), ((2, 3, 2), (3, 2, 4))])
def test_block_and_thread_indices_in_2d_and_3d(indexing, grid, block):
    g = tuple(grid) + (1,) * (3 - len(grid))
    b = tuple(block) + (1,) * (3 - len(block))
    out = np.full((g[2], g[1], g[0], b[2], b[1], b[0], 6), -1, np.int32)
    indexing.get_function("coordinates")(grid, block, (out,))
    expected = np.indices((g[2], g[1], g[0], b[2], b[1], b[0])).transpose(1, 2, 3, 4, 5, 6, 0)
    np.testing.assert_array_equal(out, expected)


def test_atomic_add_accumulates_across_blocks(indexing):
    x = np.random.default_rng(3).integers(0, 10, 1000).astype(np.int32)
    counts = np.zeros(10, np.int32)
    total = np.zeros(1, np.float32)
    indexing.get_function("histogram")((4, 2), 128, (x, np.int32(x.size), counts, total))
    np.testing.assert_array_equal(counts, np.bincount(x, minlength=10))
    assert total[0] == x.sum()


# ----------------------------------------------------------------------------------------------------------------
# Building: from a file (left unchanged), cached, and with the portable fiber switch


def test_module_from_a_file_leaves_it_unchanged_and_reports_its_path(tmp_path):
    path = tmp_path / "kernel.cu"
    path.write_text(SHARED + BUGS)
    before = path.read_bytes()
    module = EmulatedModule(path=path)
    assert path.read_bytes() == before
    x = np.arange(32, dtype=np.float32)
    y = np.zeros_like(x)
    module.get_function("reverse")(1, 32, (x, y, np.int32(32)), shared_mem=32 * 4)
    np.testing.assert_array_equal(y, x[::-1])
    with pytest.raises(DeadlockError, match=f"{path}:{line_of(SHARED + BUGS, 'barrier A')}"):
        module.get_function("divergent_barrier")(1, 32, (y,))
    with pytest.raises(EmulatorError, match="no extern \"C\" __global__ function 'nope'.*found: reverse"):
        module.get_function("nope")


def test_second_build_comes_from_the_cache():
    EmulatedModule(code=ARGS, name="args")
    start = time.perf_counter()
    module = EmulatedModule(code=ARGS, name="args")
    assert time.perf_counter() - start < 0.5
    assert module.library_path.parent == emulator.cache_dir()


def test_compile_errors_carry_the_compiler_output():
    with pytest.raises(emulator.CompileError, match="oops.cu:3"):
        EmulatedModule(code='extern "C" __global__ void k(float* y) {\n\n  y[0] = undefined_name;\n}\n', name="oops")


def test_portable_ucontext_switch(monkeypatch):
    monkeypatch.setenv("MINIDNI_EMU_SWITCH", "ucontext")
    module = EmulatedModule(code=WARP, name="warp_ucontext")
    x = np.random.default_rng(4).standard_normal(64).astype(np.float32)
    out = np.zeros(1, np.float32)
    module.get_function("block_sum_syncwarp")(1, 64, (x, out))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# AddressSanitizer: an out-of-bounds global read is reported at the .cu line (only under MINIDNI_EMU_SANITIZE)

OOB = r"""
extern "C" __global__ void shift_left(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];  // reads x[n]: one past the end
}
"""


@pytest.mark.skipif(emulator.sanitizer() != "address", reason="needs " + emulator.sanitizer_command())
def test_address_sanitizer_reports_an_out_of_bounds_read():
    script = textwrap.dedent(
        f"""
        import numpy as np
        from minidni.cuda.emulator import EmulatedModule
        k = EmulatedModule(code={OOB!r}, name="oob").get_function("shift_left")
        x = np.ones(1000, np.float32)
        k((8,), (128,), (x, np.zeros_like(x), np.int32(1000)))
        print("no error reported")
        """
    )
    # In a subprocess, because ASan ends the process it finds the error in (the environment, libasan included,
    # is inherited).
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "heap-buffer-overflow" in result.stderr
    assert f"oob.cu:{line_of(OOB, 'one past the end')}" in result.stderr
    assert "no error reported" not in result.stdout


# ----------------------------------------------------------------------------------------------------------------
# The build cache is keyed on every included header: an edited header is rebuilt, never served stale

SCALED = r"""
#include "scale.cuh"
extern "C" __global__ void scale_copy(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = SCALE * x[i];
}
"""


def test_an_edited_header_rebuilds_the_module(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_EMU_CACHE", str(tmp_path / "cache"))
    include = tmp_path / "include"
    include.mkdir()
    (include / "scale.cuh").write_text('#include "factor.cuh"\n#define SCALE FACTOR\n')
    x = np.arange(5, dtype=np.float32)

    def run():
        module = EmulatedModule(code=SCALED, options=(f"-I{include}",), name="scaled")
        y = np.zeros_like(x)
        module.get_function("scale_copy")((1,), (32,), (x, y, np.int32(5)))
        return module, y

    (include / "factor.cuh").write_text("#define FACTOR 2.0f\n")  # included by scale.cuh, not by the source
    first, y = run()
    np.testing.assert_array_equal(y, 2 * x)
    (include / "factor.cuh").write_text("#define FACTOR 3.0f\n")
    second, y = run()
    assert second.library_path != first.library_path
    np.testing.assert_array_equal(y, 3 * x)
    assert [p.name for p in second._headers()] == ["scale.cuh", "factor.cuh"]
