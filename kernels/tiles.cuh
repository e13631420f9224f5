// tiles.cuh - the tiled matrix product every GEMM-shaped kernel of minidni is built on, and the loaders and
// optimiser steps those kernels plug into it.
//
//     acc[m][n] = sum_k A(m, k) B(k, n)        for the BM x BN tile of the output that this thread block owns
//
// A and B are not arrays but *loaders*: small structs whose operator() returns one element. That is what lets
// the fused kernels form their operands while loading them - a gathered label row, a constant 1 for a bias, or
// the SG error dh_syn - dh_target - without ever writing those operands to memory.
//
// Why tiles: the naive kernels (the v1 of each file) read every operand from global memory once per output
// element, 2K loads per multiply-add pair. Here a block stages a BM x BK slice of A and a BK x BN slice of B in
// shared memory, once, and every thread of the block reads them from there: each global element is loaded once per
// block instead of once per thread (BN or BM times fewer global reads).
// Why register blocks (TM x TN > 1): with one output per thread, every multiply-add still costs two shared-memory
// reads. A thread that owns TM x TN outputs loads TM values of A and TN of B per k and does TM*TN multiply-adds
// with them from registers: 2 / (TM*TN) * (TM + TN) / 2 shared reads per multiply-add, 4x fewer at 4 x 4.
#pragma once
#include "common.cuh"

// ---------------------------------------------------------------------------------------------------------------
// loaders

// A row-major matrix p with leading dimension ld: element (r, c) = p[r * ld + c].
// k_fastest: as the A operand (m, k) = (r, c), consecutive threads should walk k to read consecutive addresses.
struct RowMajor {
    const float* p;
    int ld;
    static constexpr bool k_fastest = true;
    __device__ __forceinline__ float operator()(int r, int c) const { return p[r * ld + c]; }
};

// The transposed input of a weight gradient, extended by one-hot label rows and a bias row:
//     row i of [u, onehot(y), 1]^T, i.e. element (i, b) =  u[b][i]          for i < Du
//                                                         [y_b == i - Du]  for Du <= i < Du + K
//                                                         1                for i == Du + K (when has_bias)
// The label rows are *gathered* (a comparison), never multiplied through a materialised one-hot matrix.
// As the A operand (m, k) = (i, b): consecutive threads should walk i (a row of u) for coalesced reads.
struct InputT {
    const float* u;
    const int* labels;  // may be null when K == 0
    int Du, K;
    static constexpr bool k_fastest = false;
    __device__ __forceinline__ float operator()(int i, int b) const {
        if (i < Du) return u[b * Du + i];
        if (i < Du + K) return labels[b] == i - Du ? 1.0f : 0.0f;
        return 1.0f;  // the bias row (the caller sizes the row count to include it only when there is a bias)
    }
};

// ---------------------------------------------------------------------------------------------------------------
// the optimiser steps that end a fused update: minidni.optim's SGD-momentum and Adam (sum form), element by element

struct SgdMomentum {
    float* velocity;
    float lr, momentum;
    // v <- mu v + g;  p <- p - lr v
    __device__ __forceinline__ void operator()(float* P, int idx, float g) const {
        float v = momentum * velocity[idx] + g;
        velocity[idx] = v;
        P[idx] -= lr * v;
    }
};

struct AdamSum {
    float *M, *V;
    float a_t, eps_t, beta1, beta2;  // the step's folded constants (minidni.optim.Adam.step)
    // M <- b1 M + g;  V <- b2 V + g^2;  p <- p - a_t M / (sqrt(V) + eps_t)
    __device__ __forceinline__ void operator()(float* P, int idx, float g) const {
        float m = beta1 * M[idx] + g;
        float v = beta2 * V[idx] + g * g;
        M[idx] = m;
        V[idx] = v;
        P[idx] -= a_t * (m / (sqrtf(v) + eps_t));
    }
};

// ---------------------------------------------------------------------------------------------------------------
// the tiled product

// The top-left output element of this block's tile; blockIdx.x walks the columns (n), blockIdx.y the rows (m).
__device__ __forceinline__ int tile_m0(int BM) { return blockIdx.y * BM; }
__device__ __forceinline__ int tile_n0(int BN) { return blockIdx.x * BN; }

// Launch with a 1-D block of (BM / TM) * (BN / TN) threads and grid (ceil(N / BN), ceil(M / BM)).
// Thread t owns the outputs (m0 + (t / (BN/TN)) * TM + i, n0 + (t % (BN/TN)) * TN + j), i < TM, j < TN.
// Every thread of the block must call this (it contains barriers); out-of-range elements load as 0.
template <int BM, int BN, int BK, int TM, int TN, class LoadA, class LoadB>
__device__ __forceinline__ void tile_product(const LoadA& load_a, const LoadB& load_b, int M, int N, int K,
                                             float (&acc)[TM][TN]) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    __shared__ float As[BK][BM];  // k-major, so a thread's TM rows at one k are adjacent
    __shared__ float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int tm = tid / (BN / TN), tn = tid % (BN / TN);
    const int m0 = tile_m0(BM), n0 = tile_n0(BN);

#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += BK) {
        // stage the A and B slices; each element of the block's slices is loaded by exactly one thread
        for (int e = tid; e < BM * BK; e += THREADS) {
            const int m = LoadA::k_fastest ? e / BK : e % BM;
            const int k = LoadA::k_fastest ? e % BK : e / BM;
            As[k][m] = (m0 + m < M && k0 + k < K) ? load_a(m0 + m, k0 + k) : 0.0f;
        }
        for (int e = tid; e < BK * BN; e += THREADS) {
            const int k = e / BN, n = e % BN;  // B is read along its rows: consecutive threads, consecutive n
            Bs[k][n] = (k0 + k < K && n0 + n < N) ? load_b(k0 + k, n0 + n) : 0.0f;
        }
        __syncthreads();  // the slices are complete before anyone reads them

#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[k][tm * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs[k][tn * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();  // everyone is done reading before the next slice overwrites them
    }
}

// The epilogue's loop: calls fn(m, n, value) for each output (m, n) < (M, N) this thread owns after tile_product.
// fn is where a kernel finishes its work in registers (bias and activation, the SG epilogue, an optimiser step).
template <int BM, int BN, int TM, int TN, class Fn>
__device__ __forceinline__ void for_each_owned(const float (&acc)[TM][TN], int M, int N, Fn fn) {
    const int tm = threadIdx.x / (BN / TN), tn = threadIdx.x % (BN / TN);
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = tile_m0(BM) + tm * TM + i;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = tile_n0(BN) + tn * TN + j;
            if (m < M && n < N) fn(m, n, acc[i][j]);
        }
    }
}

// Sum of v over the whole (1-D, multiple-of-32) block; the result is valid in thread 0. Contains barriers.
template <int THREADS>
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[THREADS / 32];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.0f;
    if (threadIdx.x == 0)
        for (int w = 0; w < THREADS / 32; ++w) total += partial[w];
    return total;
}
