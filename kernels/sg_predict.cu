// sg_predict.cu - the synthetic-gradient module's linear map, fused with the block's activation derivative.
//
//     dh_syn = (u A + C[y] + c) * inv_scale       the SG prediction for the block's output h     (B, D)
//     delta  = dh_syn * f'(z)                      what the block's backward needs next           (B, D)
//
// u (B, Du) is the map's input: h itself for a linear SG module, the last hidden layer for an MLP one.
// P = [A; C; c] (Du + K + 1, D) row-major: the SG output layer's flat weight-and-bias buffer, exactly as
// minidni.layers.flatten_parameters lays it out; K = 0 for an unconditioned module, K = classes for cDNI.
// C[y] is *gathered* - row y_b of C is added to output row b - instead of multiplying a one-hot (B, K)
// matrix by C, which would be K/Du more multiply-adds and a (B, K) operand that is almost all zeros.
// f'(z) is written in terms of the block output h (relu: h > 0), so the block needs to keep nothing else.
// inv_scale undoes SyntheticGradient's optional output scale (1 when unused).
//
// Reference: minidni.cuda.reference.sg_predict. Unfused: a GEMM, a one-hot build, a second GEMM for C, a bias
// add, a scale and a mask multiply - six launches and five (B, D) round trips that this kernel keeps in registers.
//
// Versions: v1 one thread per output, operands from global memory; v2 16 x 16 shared-memory tiles; v3 64 x 64
// tiles with 4 x 4 register blocks (see tiles.cuh for why each is faster).
#include "tiles.cuh"

__device__ __forceinline__ void sg_predict_epilogue(float acc, const float* P, const int* labels, const float* h,
                                                    float* dh_syn, float* delta, int m, int n, int Du, int D, int K,
                                                    int act, float inv_scale) {
    float s = acc + P[(Du + K) * D + n];         // + c, the last row of P
    if (K > 0) s += P[(Du + labels[m]) * D + n];  // + C[y_m], gathered
    s *= inv_scale;
    dh_syn[m * D + n] = s;
    delta[m * D + n] = s * act_grad(h[m * D + n], act);
}

extern "C" __global__ void sg_predict_v1(const float* __restrict__ u, const float* __restrict__ P,
                                         const int* __restrict__ labels, const float* __restrict__ h,
                                         float* __restrict__ dh_syn, float* __restrict__ delta, int B, int Du, int D,
                                         int K, int act, float inv_scale) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= B || n >= D) return;
    float acc = 0.0f;
    for (int k = 0; k < Du; ++k) acc += u[m * Du + k] * P[k * D + n];
    sg_predict_epilogue(acc, P, labels, h, dh_syn, delta, m, n, Du, D, K, act, inv_scale);
}

template <int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void sg_predict_tiled(const float* u, const float* P, const int* labels, const float* h,
                                                 float* dh_syn, float* delta, int B, int Du, int D, int K, int act,
                                                 float inv_scale) {
    float acc[TM][TN];
    tile_product<BM, BN, BK, TM, TN>(RowMajor{u, Du}, RowMajor{P, D}, B, D, Du, acc);  // u A, A = rows 0..Du-1
    for_each_owned<BM, BN, TM, TN>(acc, B, D, [&](int m, int n, float s) {
        sg_predict_epilogue(s, P, labels, h, dh_syn, delta, m, n, Du, D, K, act, inv_scale);
    });
}

extern "C" __global__ void __launch_bounds__(256)
    sg_predict_v2(const float* __restrict__ u, const float* __restrict__ P, const int* __restrict__ labels,
                  const float* __restrict__ h, float* __restrict__ dh_syn, float* __restrict__ delta, int B, int Du,
                  int D, int K, int act, float inv_scale) {
    sg_predict_tiled<16, 16, 16, 1, 1>(u, P, labels, h, dh_syn, delta, B, Du, D, K, act, inv_scale);
}

extern "C" __global__ void __launch_bounds__(256)
    sg_predict_v3(const float* __restrict__ u, const float* __restrict__ P, const int* __restrict__ labels,
                  const float* __restrict__ h, float* __restrict__ dh_syn, float* __restrict__ delta, int B, int Du,
                  int D, int K, int act, float inv_scale) {
    sg_predict_tiled<64, 64, 8, 4, 4>(u, P, labels, h, dh_syn, delta, B, Du, D, K, act, inv_scale);
}
