// layer_update.cu - a layer's weight update fused into its gradient product.
//
//     grad = [x, 1]^T delta        (Din [+1], Dout): the weight gradient x^T delta and, with a bias, sum_b delta
//     P   <- P - opt(grad)         SGD with momentum or Adam, exactly as minidni.optim steps them
//
// x (B, Din) is the layer's input, delta (B, Dout) the gradient at its output (after the activation's and
// batch norm's backward). P = [W; b] is the layer's flat (Din [+1], Dout) weight-and-bias buffer; the optimiser
// state (velocity, or Adam's M and V) has P's shape. The gradient is finished in registers and consumed there:
// dW is never written to memory, and the optimiser's read-modify-write of P and its state happens in the same
// pass instead of the 8-10 elementwise passes that minidni.optim makes over a materialised dW.
//
// Reference: minidni.cuda.reference.layer_update. Kernel names: layer_update_{sgd,adam}_v{1,2,3}.
// Versions: v1 one thread per weight, summing over the batch from global memory; v2 16 x 16 shared-memory
// tiles; v3 64 x 64 tiles with 4 x 4 register blocks (tiles.cuh says why each is faster). The batch B is the
// reduction length here, so these tiles walk the batch in slices of BK rows.
#include "tiles.cuh"

// v1: thread (i, j) computes grad[i][j] = sum_b in(b, i) delta[b][j] and applies the step to P[i][j].
template <class Opt>
__device__ __forceinline__ void layer_update_naive(const float* x, const float* delta, float* P, int B, int Din,
                                                   int Dout, int has_bias, Opt opt) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= Din + has_bias || j >= Dout) return;
    const InputT in{x, nullptr, Din, 0};
    float g = 0.0f;
    for (int b = 0; b < B; ++b) g += in(i, b) * delta[b * Dout + j];
    opt(P, i * Dout + j, g);
}

template <int BM, int BN, int BK, int TM, int TN, class Opt>
__device__ __forceinline__ void layer_update_tiled(const float* x, const float* delta, float* P, int B, int Din,
                                                   int Dout, int has_bias, Opt opt) {
    const int rows = Din + has_bias;
    float acc[TM][TN];
    tile_product<BM, BN, BK, TM, TN>(InputT{x, nullptr, Din, 0}, RowMajor{delta, Dout}, rows, Dout, B, acc);
    for_each_owned<BM, BN, TM, TN>(acc, rows, Dout, [&](int m, int n, float g) { opt(P, m * Dout + n, g); });
}

// ---- SGD with momentum: v <- mu v + g; p <- p - lr v ----------------------------------------------------------

extern "C" __global__ void layer_update_sgd_v1(const float* __restrict__ x, const float* __restrict__ delta,
                                               float* __restrict__ P, int B, int Din, int Dout, int has_bias,
                                               float* __restrict__ velocity, float lr, float momentum) {
    layer_update_naive(x, delta, P, B, Din, Dout, has_bias, SgdMomentum{velocity, lr, momentum});
}

extern "C" __global__ void __launch_bounds__(256)
    layer_update_sgd_v2(const float* __restrict__ x, const float* __restrict__ delta, float* __restrict__ P, int B,
                        int Din, int Dout, int has_bias, float* __restrict__ velocity, float lr, float momentum) {
    layer_update_tiled<16, 16, 16, 1, 1>(x, delta, P, B, Din, Dout, has_bias, SgdMomentum{velocity, lr, momentum});
}

extern "C" __global__ void __launch_bounds__(256)
    layer_update_sgd_v3(const float* __restrict__ x, const float* __restrict__ delta, float* __restrict__ P, int B,
                        int Din, int Dout, int has_bias, float* __restrict__ velocity, float lr, float momentum) {
    layer_update_tiled<64, 64, 8, 4, 4>(x, delta, P, B, Din, Dout, has_bias, SgdMomentum{velocity, lr, momentum});
}

// ---- Adam, minidni's sum form: M <- b1 M + g; V <- b2 V + g^2; p <- p - a_t M / (sqrt(V) + eps_t) -------------

extern "C" __global__ void layer_update_adam_v1(const float* __restrict__ x, const float* __restrict__ delta,
                                                float* __restrict__ P, int B, int Din, int Dout, int has_bias,
                                                float* __restrict__ M, float* __restrict__ V, float a_t, float eps_t,
                                                float beta1, float beta2) {
    layer_update_naive(x, delta, P, B, Din, Dout, has_bias, AdamSum{M, V, a_t, eps_t, beta1, beta2});
}

extern "C" __global__ void __launch_bounds__(256)
    layer_update_adam_v2(const float* __restrict__ x, const float* __restrict__ delta, float* __restrict__ P, int B,
                         int Din, int Dout, int has_bias, float* __restrict__ M, float* __restrict__ V, float a_t,
                         float eps_t, float beta1, float beta2) {
    layer_update_tiled<16, 16, 16, 1, 1>(x, delta, P, B, Din, Dout, has_bias,
                                         AdamSum{M, V, a_t, eps_t, beta1, beta2});
}

extern "C" __global__ void __launch_bounds__(256)
    layer_update_adam_v3(const float* __restrict__ x, const float* __restrict__ delta, float* __restrict__ P, int B,
                         int Din, int Dout, int has_bias, float* __restrict__ M, float* __restrict__ V, float a_t,
                         float eps_t, float beta1, float beta2) {
    layer_update_tiled<64, 64, 8, 4, 4>(x, delta, P, B, Din, Dout, has_bias, AdamSum{M, V, a_t, eps_t, beta1, beta2});
}
