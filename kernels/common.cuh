// common.cuh - small device helpers shared by minidni's kernels.
//
// Plain CUDA C that NVRTC accepts: no host headers, so no INFINITY or FLT_MAX (NVRTC rejects both). The CPU
// emulator (minidni/cuda/emulator.py) compiles this same file with a C++ compiler.
#pragma once

// The largest finite float, and minus infinity, spelled so that NVRTC needs no header.
#define MINIDNI_FLT_MAX 3.402823466e+38f
#define MINIDNI_NEG_INF __int_as_float(0xff800000)

// Activation codes, shared with minidni.cuda.reference.ACTS.
#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_TANH 2
#define ACT_SIGMOID 3

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// h = f(z)
__device__ __forceinline__ float act_forward(float z, int act) {
    switch (act) {
        case ACT_RELU: return z > 0.0f ? z : 0.0f;
        case ACT_TANH: return tanhf(z);
        case ACT_SIGMOID: return 0.5f * (tanhf(0.5f * z) + 1.0f);  // the engine's overflow-free form
        default: return z;
    }
}

// f'(z) written in terms of the output h = f(z): what the backward needs, with no z kept around.
__device__ __forceinline__ float act_grad(float h, int act) {
    switch (act) {
        case ACT_RELU: return h > 0.0f ? 1.0f : 0.0f;
        case ACT_TANH: return 1.0f - h * h;
        case ACT_SIGMOID: return h * (1.0f - h);
        default: return 1.0f;
    }
}

// Sum / max over the 32 lanes of a full warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
