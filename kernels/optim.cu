// optim.cu - one optimiser step over a flat parameter slice whose gradient already exists.
//
// The fused kernels (layer_update.cu, sg_update.cu) step the big weight matrices as they finish their
// gradients. What remains of a block - batch norm's gamma and beta, the hidden layers of an MLP synthetic-gradient
// module - has its gradient in the block's flat gradient buffer, and takes its step here, on the same flat
// optimiser state, with the same per-element rule (tiles.cuh: SgdMomentum, AdamSum).
//
// Reference: minidni.cuda.reference.optimizer_step. One version each: an elementwise step is bound by memory
// bandwidth (it reads and writes each of 3-4 arrays once), so v1 already does the minimum traffic; there is no
// reuse for tiling to exploit.
#include "tiles.cuh"

extern "C" __global__ void sgd_step_v1(float* __restrict__ P, const float* __restrict__ grad,
                                       float* __restrict__ velocity, int n, float lr, float momentum) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) SgdMomentum{velocity, lr, momentum}(P, i, grad[i]);
}

extern "C" __global__ void adam_step_v1(float* __restrict__ P, const float* __restrict__ grad, float* __restrict__ M,
                                        float* __restrict__ V, int n, float a_t, float eps_t, float beta1,
                                        float beta2) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) AdamSum{M, V, a_t, eps_t, beta1, beta2}(P, i, grad[i]);
}
