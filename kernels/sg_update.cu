// sg_update.cu - the synthetic-gradient module's regression step, with its loss, in one pass.
//
//     e      = dh_syn - dh_target                     the SG module's error                 (B, D)
//     loss  += (1/B) sum_b ||e_b||^2                  minidni's SG loss (functional.mse)
//     grad   = [u, onehot(y), 1]^T (coef * e)         coef = 2 * scale / B: the mse gradient, times the
//                                                     module's output scale (SyntheticGradient.update)
//     P     <- P - opt(grad)                          SGD with momentum or Adam (minidni.optim)
//
// u (B, Du): the map's input; labels (B,) int32 and K classes for a cDNI module (K = 0 otherwise);
// P = [A; C; c] (Du + K + 1, D): the SG output layer's flat buffer, as sg_predict.cu reads it.
// The error e is formed while loading dh_syn and dh_target into the tile, so neither e nor the mse gradient is
// ever written to memory; the one-hot rows are gathered label comparisons; and the blocks of the first row of
// tiles, which between them load every element of e exactly once, also reduce the loss. `loss` must be zeroed by
// the caller (it is atomically accumulated).
//
// Reference: minidni.cuda.reference.sg_update. Kernel names: sg_update_{sgd,adam}_v{1,2,3}.
// Versions: v1 one thread per parameter, from global memory (threads of row 0 also sum the loss of their column);
// v2 16 x 16 shared-memory tiles; v3 64 x 64 tiles with 4 x 4 register blocks (see tiles.cuh).
#include "tiles.cuh"

// The B operand (b, j) = coef * (dh_syn[b][j] - dh_target[b][j]), adding e^2 to *sq when sq is given.
struct ScaledError {
    const float* dh_syn;
    const float* dh_target;
    int D;
    float coef;
    float* sq;  // this thread's running sum of squared errors, or null in blocks that do not reduce the loss
    __device__ __forceinline__ float operator()(int b, int j) const {
        const float e = dh_syn[b * D + j] - dh_target[b * D + j];
        if (sq) *sq += e * e;
        return coef * e;
    }
};

template <class Opt>
__device__ __forceinline__ void sg_update_naive(const float* u, const int* labels, const float* dh_syn,
                                                const float* dh_target, float* P, float* loss, int B, int Du, int D,
                                                int K, float coef, float inv_B, Opt opt) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y * blockDim.y + threadIdx.y;
    if (i >= Du + K + 1 || j >= D) return;
    const InputT in{u, labels, Du, K};
    float sq = 0.0f;
    const ScaledError err{dh_syn, dh_target, D, coef, i == 0 ? &sq : nullptr};  // row 0 owns the loss of column j
    float g = 0.0f;
    for (int b = 0; b < B; ++b) g += in(i, b) * err(b, j);
    opt(P, i * D + j, g);
    if (i == 0) atomicAdd(loss, sq * inv_B);
}

template <int BM, int BN, int BK, int TM, int TN, class Opt>
__device__ __forceinline__ void sg_update_tiled(const float* u, const int* labels, const float* dh_syn,
                                                const float* dh_target, float* P, float* loss, int B, int Du, int D,
                                                int K, float coef, float inv_B, Opt opt) {
    constexpr int THREADS = (BM / TM) * (BN / TN);
    const int rows = Du + K + 1;
    const bool reduces_loss = blockIdx.y == 0;  // the first row of tiles loads every (b, j) of e exactly once
    float sq = 0.0f;
    float acc[TM][TN];
    tile_product<BM, BN, BK, TM, TN>(InputT{u, labels, Du, K},
                                     ScaledError{dh_syn, dh_target, D, coef, reduces_loss ? &sq : nullptr}, rows, D,
                                     B, acc);
    for_each_owned<BM, BN, TM, TN>(acc, rows, D, [&](int m, int n, float g) { opt(P, m * D + n, g); });
    if (reduces_loss) {  // uniform across the block, so the barriers inside block_sum are not divergent
        const float total = block_sum<THREADS>(sq);
        if (threadIdx.x == 0) atomicAdd(loss, total * inv_B);
    }
}

// ---- SGD with momentum ------------------------------------------------------------------------------------------

extern "C" __global__ void sg_update_sgd_v1(const float* __restrict__ u, const int* __restrict__ labels,
                                            const float* __restrict__ dh_syn, const float* __restrict__ dh_target,
                                            float* __restrict__ P, float* __restrict__ loss, int B, int Du, int D,
                                            int K, float coef, float inv_B, float* __restrict__ velocity, float lr,
                                            float momentum) {
    sg_update_naive(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                    SgdMomentum{velocity, lr, momentum});
}

extern "C" __global__ void __launch_bounds__(256)
    sg_update_sgd_v2(const float* __restrict__ u, const int* __restrict__ labels, const float* __restrict__ dh_syn,
                     const float* __restrict__ dh_target, float* __restrict__ P, float* __restrict__ loss, int B,
                     int Du, int D, int K, float coef, float inv_B, float* __restrict__ velocity, float lr,
                     float momentum) {
    sg_update_tiled<16, 16, 16, 1, 1>(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                                      SgdMomentum{velocity, lr, momentum});
}

extern "C" __global__ void __launch_bounds__(256)
    sg_update_sgd_v3(const float* __restrict__ u, const int* __restrict__ labels, const float* __restrict__ dh_syn,
                     const float* __restrict__ dh_target, float* __restrict__ P, float* __restrict__ loss, int B,
                     int Du, int D, int K, float coef, float inv_B, float* __restrict__ velocity, float lr,
                     float momentum) {
    sg_update_tiled<64, 64, 8, 4, 4>(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                                     SgdMomentum{velocity, lr, momentum});
}

// ---- Adam (minidni's sum form) ------------------------------------------------------------------------------------

extern "C" __global__ void sg_update_adam_v1(const float* __restrict__ u, const int* __restrict__ labels,
                                             const float* __restrict__ dh_syn, const float* __restrict__ dh_target,
                                             float* __restrict__ P, float* __restrict__ loss, int B, int Du, int D,
                                             int K, float coef, float inv_B, float* __restrict__ M,
                                             float* __restrict__ V, float a_t, float eps_t, float beta1, float beta2) {
    sg_update_naive(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                    AdamSum{M, V, a_t, eps_t, beta1, beta2});
}

extern "C" __global__ void __launch_bounds__(256)
    sg_update_adam_v2(const float* __restrict__ u, const int* __restrict__ labels, const float* __restrict__ dh_syn,
                      const float* __restrict__ dh_target, float* __restrict__ P, float* __restrict__ loss, int B,
                      int Du, int D, int K, float coef, float inv_B, float* __restrict__ M, float* __restrict__ V,
                      float a_t, float eps_t, float beta1, float beta2) {
    sg_update_tiled<16, 16, 16, 1, 1>(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                                      AdamSum{M, V, a_t, eps_t, beta1, beta2});
}

extern "C" __global__ void __launch_bounds__(256)
    sg_update_adam_v3(const float* __restrict__ u, const int* __restrict__ labels, const float* __restrict__ dh_syn,
                      const float* __restrict__ dh_target, float* __restrict__ P, float* __restrict__ loss, int B,
                      int Du, int D, int K, float coef, float inv_B, float* __restrict__ M, float* __restrict__ V,
                      float a_t, float eps_t, float beta1, float beta2) {
    sg_update_tiled<64, 64, 8, 4, 4>(u, labels, dh_syn, dh_target, P, loss, B, Du, D, K, coef, inv_B,
                                     AdamSum{M, V, a_t, eps_t, beta1, beta2});
}
