// softmax_xent.cu - softmax cross-entropy, forward and backward in one pass over the logits.
//
// The math (per row b of a (B, K) batch of logits; the reference is minidni.cuda.reference.softmax_xent):
//     m         = max_k logits[b, k]                      shifting by the max makes every exponent <= 0,
//     s         = sum_k exp(logits[b, k] - m)             so exp cannot overflow, and s >= 1
//     loss_b    = -(logits[b, y_b] - m - log s)           = -log softmax(logits_b)[y_b]
//     dlogits   = (exp(logits[b, k] - m) / s - [k == y_b]) / B
// The batch loss is the mean of loss_rows (left to the caller: a sum over B values); the 1/B is already in dlogits.
//
// Contract: logits (B, K) float32, labels (B,) int32, loss_rows (B,) float32, dlogits (B, K) float32; row-major,
// contiguous; B >= 1, K >= 1, B * K < 2^31 (int indexing). Writes loss_rows and dlogits. A label outside [0, K)
// is never used as an index: that row's loss and its whole dlogits row are written as NaN, so a bad label shows
// up loudly in the loss instead of reading or writing out of bounds (minidni.cuda.norm_ops rejects such labels
// before launching anyway).
//
// Versions:
//   v1  the naive port: one thread per row, three serial passes over its K logits (max, sum of exponentials,
//       write). Launch: block (256), grid (ceil(B/256)). Neighbouring threads read addresses K floats apart, so a
//       warp's 32 loads touch 32 different cache lines (uncoalesced), and only B threads exist in total.
//   v2  one warp per row: block (32, R) holds R rows (the launcher uses R = 8), lane l reads logits l, l + 32,
//       l + 64, ... of its row, so a warp's loads are 32 adjacent floats (coalesced), and the row's max and sum
//       are combined across lanes with warp shuffles (warp_max / warp_sum in common.cuh) - no shared memory,
//       no __syncthreads. Works for any K: for K < 32 the lanes past K hold the neutral values (-inf for the
//       max, 0 for the sum) and write nothing. 32x more threads than v1.
//
// What this file deliberately is not: a kernel for huge K (a vocabulary of 50k), where a block per row and an
// online max/sum in a single read of the row would win.

#include "common.cuh"

// A quiet NaN, spelled so that NVRTC needs no header (like MINIDNI_NEG_INF in common.cuh).
#define MINIDNI_NAN __int_as_float(0x7fc00000)

// ------------------------------------------------------------------------------------------------------------
// v1: one thread per row

extern "C" __global__ void softmax_xent_v1(const float* logits, const int* labels, float* loss_rows, float* dlogits,
                                           int B, int K) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const float* row = logits + b * K;
    float* drow = dlogits + b * K;
    int y = labels[b];
    if (y < 0 || y >= K) {
        loss_rows[b] = MINIDNI_NAN;
        for (int k = 0; k < K; k++) drow[k] = MINIDNI_NAN;
        return;
    }

    float m = MINIDNI_NEG_INF;
    for (int k = 0; k < K; k++) m = fmaxf(m, row[k]);
    float s = 0.0f;
    for (int k = 0; k < K; k++) s += expf(row[k] - m);

    loss_rows[b] = -((row[y] - m) - logf(s));
    for (int k = 0; k < K; k++) drow[k] = (expf(row[k] - m) / s - (k == y ? 1.0f : 0.0f)) / B;
}

// ------------------------------------------------------------------------------------------------------------
// v2: one warp per row, lanes striding over the K logits, max and sum by warp shuffles

extern "C" __global__ void softmax_xent_v2(const float* logits, const int* labels, float* loss_rows, float* dlogits,
                                           int B, int K) {
    int lane = threadIdx.x;  // blockDim.x == 32
    int b = blockIdx.x * blockDim.y + threadIdx.y;
    if (b >= B) return;  // the whole warp leaves together, so the shuffles below always see 32 lanes
    const float* row = logits + b * K;
    float* drow = dlogits + b * K;
    int y = labels[b];  // the same address for all 32 lanes: one broadcast load
    if (y < 0 || y >= K) {
        if (lane == 0) loss_rows[b] = MINIDNI_NAN;
        for (int k = lane; k < K; k += 32) drow[k] = MINIDNI_NAN;
        return;
    }

    float m = MINIDNI_NEG_INF;
    for (int k = lane; k < K; k += 32) m = fmaxf(m, row[k]);
    m = warp_max(m);
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s += expf(row[k] - m);
    s = warp_sum(s);

    if (lane == 0) loss_rows[b] = -((row[y] - m) - logf(s));
    for (int k = lane; k < K; k += 32) drow[k] = (expf(row[k] - m) / s - (k == y ? 1.0f : 0.0f)) / B;
}
