// batchnorm.cu - batch normalisation in training mode, fused with the activation that follows it, and its backward.
//
// The math (per column d of a (B, D) batch; the reference is minidni.cuda.reference.bn_forward_train/bn_backward):
//     mean    = (1/B) sum_b z[b, d]
//     var     = (1/B) sum_b (z[b, d] - mean)^2           biased, and "two-pass": centred before squaring, which
//                                                         stays accurate when |mean| >> std (sum z^2 - B mean^2
//                                                         would cancel catastrophically)
//     inv_std = 1 / sqrt(var + eps)
//     xhat    = (z - mean) * inv_std
//     h       = f(gamma * xhat + beta)                   f = the act code's activation (common.cuh)
//     running_mean = (1 - momentum) running_mean + momentum mean
//     running_var  = (1 - momentum) running_var  + momentum B/(B-1) var      (unbiased, as BatchNorm1d keeps it)
// and backward, from dy (B, D) = the gradient at BN's output with f' already applied:
//     dbeta  = sum_b dy
//     dgamma = sum_b dy * xhat
//     dx     = gamma * inv_std * (dy - (dbeta + xhat * dgamma) / B)
// Each column is independent: a BN kernel is D column reductions over B rows, then an elementwise pass.
//
// Contract (all float32, row-major and contiguous; B >= 2, D >= 1, B * D < 2^31 for int indexing):
//   bn_forward_train_vN(z (B,D), gamma (D), beta (D), running_mean (D), running_var (D),
//                       h (B,D), xhat (B,D), inv_std (D), B, D, act, momentum, eps)
//       writes h, xhat, inv_std; updates running_mean and running_var in place (read, then written, once per column).
//   bn_backward_vN(dy (B,D), xhat (B,D), inv_std (D), gamma (D), dx (B,D), dgamma (D), dbeta (D), B, D)
//       writes dx, dgamma, dbeta (dgamma/dbeta may be slices of a larger gradient buffer: only [0, D) is touched).
//
// Versions:
//   v1  the naive port of the reference: one thread per column, walking its B rows serially three times
//       (forward: mean, variance, write; backward: the two sums, write). Launch: block (256), grid (ceil(D/256)).
//       Loads are already coalesced - the 32 threads of a warp read 32 adjacent columns of the same row - but
//       there are only D threads in the whole grid: for D = 256 that is 8 warps for a GPU that wants tens of
//       thousands of threads in flight to hide memory latency, and each thread walks all B rows by itself.
//   v2  2-D blocks of 32 columns x R row-lanes (R a power of two <= 32; the launcher uses 16). Thread (tx, ty)
//       of block x owns column d = 32 x + tx and rows ty, ty + R, ty + 2R, ...: R times more threads and R
//       independent load streams per column, so far more memory requests are in flight. Each column's R partial
//       sums are combined by a tree reduction in shared memory (log2 R barriers). Loads stay coalesced: along a
//       warp (fixed ty, tx = 0..31) the addresses are 32 adjacent floats. The backward reduces its two sums in
//       the same tree, sharing the barriers. Launch: block (32, R), grid (ceil(D/32)).
//
// What this file deliberately is not: eval-mode BN (a per-column affine map with the running statistics, left
// to minidni.functional.batchnorm_forward_eval), or a kernel for tiny D with huge B (there a grid over chunks of
// rows plus a second reduction pass would win: v2 only ever has ceil(D/32) blocks).

#include "common.cuh"

// ------------------------------------------------------------------------------------------------------------
// v1: one thread per column

extern "C" __global__ void bn_forward_train_v1(const float* z, const float* gamma, const float* beta,
                                               float* running_mean, float* running_var, float* h, float* xhat,
                                               float* inv_std, int B, int D, int act, float momentum, float eps) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;

    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += z[b * D + d];
    float mean = sum * (1.0f / B);

    float sq = 0.0f;
    for (int b = 0; b < B; b++) {
        float c = z[b * D + d] - mean;
        sq += c * c;
    }
    float var = sq * (1.0f / B);
    float istd = 1.0f / sqrtf(var + eps);

    float g = gamma[d], bt = beta[d];
    for (int b = 0; b < B; b++) {
        float xh = (z[b * D + d] - mean) * istd;
        xhat[b * D + d] = xh;
        h[b * D + d] = act_forward(g * xh + bt, act);
    }
    inv_std[d] = istd;
    running_mean[d] = (1.0f - momentum) * running_mean[d] + momentum * mean;
    running_var[d] = (1.0f - momentum) * running_var[d] + (momentum * B / (B - 1)) * var;
}

extern "C" __global__ void bn_backward_v1(const float* dy, const float* xhat, const float* inv_std,
                                          const float* gamma, float* dx, float* dgamma, float* dbeta, int B, int D) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;

    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    for (int b = 0; b < B; b++) {
        float g = dy[b * D + d];
        sum_dy += g;
        sum_dy_xhat += g * xhat[b * D + d];
    }

    float scale = gamma[d] * inv_std[d];
    float mean_dy = sum_dy * (1.0f / B), mean_dy_xhat = sum_dy_xhat * (1.0f / B);
    for (int b = 0; b < B; b++) {
        int i = b * D + d;
        dx[i] = scale * (dy[i] - (mean_dy + xhat[i] * mean_dy_xhat));
    }
    dbeta[d] = sum_dy;
    dgamma[d] = sum_dy_xhat;
}

// ------------------------------------------------------------------------------------------------------------
// v2: 32 columns x R row-lanes per block, partial sums combined in shared memory

#define BN_COLS 32      // blockDim.x: one warp spans 32 adjacent columns
#define BN_MAX_LANES 32 // blockDim.y may be any power of two up to this

// Every thread passes its partial sum for column tx; every thread gets the column's total over the block's
// row-lanes. Must be reached by all threads of the block (it holds barriers).
__device__ float column_sum(float v, float (*partial)[BN_COLS]) {
    int tx = threadIdx.x, ty = threadIdx.y;
    partial[ty][tx] = v;
    __syncthreads();
    for (int s = blockDim.y / 2; s > 0; s >>= 1) {
        if (ty < s) partial[ty][tx] += partial[ty + s][tx];
        __syncthreads();
    }
    float total = partial[0][tx];
    __syncthreads();  // everyone has read the total before `partial` is reused
    return total;
}

extern "C" __global__ void bn_forward_train_v2(const float* z, const float* gamma, const float* beta,
                                               float* running_mean, float* running_var, float* h, float* xhat,
                                               float* inv_std, int B, int D, int act, float momentum, float eps) {
    __shared__ float partial[BN_MAX_LANES][BN_COLS];
    int tx = threadIdx.x, ty = threadIdx.y, lanes = blockDim.y;
    int d = blockIdx.x * BN_COLS + tx;
    bool live = d < D;  // threads past the last column still take part in the barriers, adding zeros

    float sum = 0.0f;
    if (live)
        for (int b = ty; b < B; b += lanes) sum += z[b * D + d];
    float mean = column_sum(sum, partial) * (1.0f / B);

    float sq = 0.0f;
    if (live)
        for (int b = ty; b < B; b += lanes) {
            float c = z[b * D + d] - mean;
            sq += c * c;
        }
    float var = column_sum(sq, partial) * (1.0f / B);
    float istd = 1.0f / sqrtf(var + eps);
    if (!live) return;  // no barriers below

    float g = gamma[d], bt = beta[d];
    for (int b = ty; b < B; b += lanes) {
        float xh = (z[b * D + d] - mean) * istd;
        xhat[b * D + d] = xh;
        h[b * D + d] = act_forward(g * xh + bt, act);
    }
    if (ty == 0) {
        inv_std[d] = istd;
        running_mean[d] = (1.0f - momentum) * running_mean[d] + momentum * mean;
        running_var[d] = (1.0f - momentum) * running_var[d] + (momentum * B / (B - 1)) * var;
    }
}

// column_sum for two sums at once: one set of barriers for both.
__device__ void column_sum2(float* a, float* b, float (*pa)[BN_COLS], float (*pb)[BN_COLS]) {
    int tx = threadIdx.x, ty = threadIdx.y;
    pa[ty][tx] = *a;
    pb[ty][tx] = *b;
    __syncthreads();
    for (int s = blockDim.y / 2; s > 0; s >>= 1) {
        if (ty < s) {
            pa[ty][tx] += pa[ty + s][tx];
            pb[ty][tx] += pb[ty + s][tx];
        }
        __syncthreads();
    }
    *a = pa[0][tx];
    *b = pb[0][tx];
}

extern "C" __global__ void bn_backward_v2(const float* dy, const float* xhat, const float* inv_std,
                                          const float* gamma, float* dx, float* dgamma, float* dbeta, int B, int D) {
    __shared__ float partial_dy[BN_MAX_LANES][BN_COLS];
    __shared__ float partial_dy_xhat[BN_MAX_LANES][BN_COLS];
    int tx = threadIdx.x, ty = threadIdx.y, lanes = blockDim.y;
    int d = blockIdx.x * BN_COLS + tx;
    bool live = d < D;

    float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
    if (live)
        for (int b = ty; b < B; b += lanes) {
            float g = dy[b * D + d];
            sum_dy += g;
            sum_dy_xhat += g * xhat[b * D + d];
        }
    column_sum2(&sum_dy, &sum_dy_xhat, partial_dy, partial_dy_xhat);  // the last use of shared memory
    if (!live) return;

    float scale = gamma[d] * inv_std[d];
    float mean_dy = sum_dy * (1.0f / B), mean_dy_xhat = sum_dy_xhat * (1.0f / B);
    for (int b = ty; b < B; b += lanes) {
        int i = b * D + d;
        dx[i] = scale * (dy[i] - (mean_dy + xhat[i] * mean_dy_xhat));
    }
    if (ty == 0) {
        dbeta[d] = sum_dy;
        dgamma[d] = sum_dy_xhat;
    }
}
