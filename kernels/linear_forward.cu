// linear_forward.cu - a linear layer's forward with its bias and activation in one kernel.
//
//     h = f(x W + b)        x (B, Din), P = [W; b] (Din [+1], Dout) row-major, h (B, Dout)
//
// Reference: minidni.cuda.reference.linear_forward (minidni.functional.linear_forward + the activation).
// Unfused, this is a cuBLAS GEMM that writes z, then a bias pass and an activation pass that each read and
// write z again: three launches and four extra (B, Dout) trips through memory. Here z never leaves registers.
//
// Versions (same arguments; launch geometry in minidni/cuda/ops.py):
//   v1  one thread per output element, every operand read from global memory: the reference, ported.
//   v2  16 x 16 shared-memory tiles (tiles.cuh): each element of x and W is read from global memory once per
//       block instead of once per thread - 16x fewer global loads.
//   v3  64 x 64 tiles with 4 x 4 outputs per thread (register blocking): 4x fewer shared-memory reads per
//       multiply-add than v2, and 16 independent accumulators per thread to hide latency.
#include "tiles.cuh"

// act is one of the ACT_* codes of common.cuh
__device__ __forceinline__ float linear_epilogue(float z, const float* P, int Din, int Dout, int n, int has_bias,
                                                 int act) {
    if (has_bias) z += P[Din * Dout + n];  // the bias is the last row of P
    return act_forward(z, act);
}

extern "C" __global__ void linear_forward_v1(const float* __restrict__ x, const float* __restrict__ P,
                                             float* __restrict__ h, int B, int Din, int Dout, int has_bias, int act) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= B || n >= Dout) return;
    float z = 0.0f;
    for (int k = 0; k < Din; ++k) z += x[m * Din + k] * P[k * Dout + n];
    h[m * Dout + n] = linear_epilogue(z, P, Din, Dout, n, has_bias, act);
}

template <int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void linear_forward_tiled(const float* x, const float* P, float* h, int B, int Din,
                                                     int Dout, int has_bias, int act) {
    float acc[TM][TN];
    tile_product<BM, BN, BK, TM, TN>(RowMajor{x, Din}, RowMajor{P, Dout}, B, Dout, Din, acc);
    for_each_owned<BM, BN, TM, TN>(acc, B, Dout, [&](int m, int n, float z) {
        h[m * Dout + n] = linear_epilogue(z, P, Din, Dout, n, has_bias, act);
    });
}

extern "C" __global__ void __launch_bounds__(256)
    linear_forward_v2(const float* __restrict__ x, const float* __restrict__ P, float* __restrict__ h, int B,
                      int Din, int Dout, int has_bias, int act) {
    linear_forward_tiled<16, 16, 16, 1, 1>(x, P, h, B, Din, Dout, has_bias, act);
}

extern "C" __global__ void __launch_bounds__(256)
    linear_forward_v3(const float* __restrict__ x, const float* __restrict__ P, float* __restrict__ h, int B,
                      int Din, int Dout, int has_bias, int act) {
    linear_forward_tiled<64, 64, 8, 4, 4>(x, P, h, B, Din, Dout, has_bias, act);
}
