// runtime.h - what a CUDA kernel file needs in order to compile as plain C++ for the CPU emulator.
//
// The emulator compiles an unchanged .cu file with `g++ -include runtime.h`, so this header comes before the
// kernel's first line. It maps the CUDA vocabulary onto the emulator's scheduler (fiber.cpp):
//
//   qualifiers      __global__ __device__ __host__ vanish; __shared__ becomes `static` (blocks run one at a time,
//                   so one copy per kernel is exactly "one copy per block")
//   indices         threadIdx reads the running fiber's index; blockIdx/blockDim/gridDim read the launch state
//   barriers        __syncthreads() and the warp collectives (__syncwarp, __shfl_*_sync, __ballot_sync, ...) are
//                   macros that pass their call site (file, line, a unique id) to the scheduler, which uses it to
//                   tell "all threads reached the same barrier" from "threads wait at different barriers"
//   arithmetic      atomics, fast-math intrinsics, bit tricks, min/max overloads, vector types
//
// What it deliberately is not: a model of GPU timing, memory ordering or floating point. Threads of a block run
// one after the other between barriers, so atomics are trivially atomic and fences are no-ops; results match a
// GPU's up to rounding (no FMA contraction, no flush-to-zero, libm's expf instead of the GPU's).
#pragma once

// Every standard header the runtime needs comes first, before the macros below can disturb it
// (libstdc++ spells attributes like __attribute__((__noinline__)), which a __noinline__ macro would break).
#include <cassert>
#include <cfloat>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <type_traits>
#include <utility>

#define MINIDNI_EMULATOR 1
#define __CUDA_ARCH__ 750  // the smallest target of CUDA 13; like sm_70+, threads of a warp are scheduled independently

// ---------------------------------------------------------------------------------------------------------------
// Qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __shared__ static  // correct only because the blocks of a launch run serially
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------------------------------------------------------
// Vector and index types
#define EMU_VECTOR_TYPES(T, name, align2, align4)                                     \
    struct __attribute__((aligned(align2))) name##2 { T x, y; };                       \
    struct name##3 { T x, y, z; };                                                     \
    struct __attribute__((aligned(align4))) name##4 { T x, y, z, w; };                 \
    inline name##2 make_##name##2(T x, T y) { return {x, y}; }                         \
    inline name##3 make_##name##3(T x, T y, T z) { return {x, y, z}; }                 \
    inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }
EMU_VECTOR_TYPES(float, float, 8, 16)
EMU_VECTOR_TYPES(int, int, 8, 16)
EMU_VECTOR_TYPES(unsigned int, uint, 8, 16)
EMU_VECTOR_TYPES(double, double, 16, 16)
#undef EMU_VECTOR_TYPES

// dim3 is uint3 whose missing components default to 1.
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

static constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------------------------
// The interface to the scheduler (fiber.cpp). Kernels never name these directly; the macros below do.
namespace emu {

// The state of the running launch. thread_idx is rewritten by the scheduler each time it resumes a fiber.
extern uint3 thread_idx;
extern uint3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
extern void* dynamic_smem;  // `extern __shared__ T name[];` is rewritten to a reference to this pointer

// A call site: the file and line for error messages, and a number unique to each textual call (__COUNTER__),
// so two barriers on the same line are still two barriers.
struct Site {
    const char* file;
    int line;
    int id;
};

enum class Op : int { SyncWarp, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, All, Any };

// Block barrier: returns how many threads arrived with pred != 0 (for __syncthreads_count/_and/_or).
int syncthreads(Site site, int pred, int* arrived);
// Warp collective: waits until every lane named in `mask` has arrived at the same call site, then returns this
// lane's result (a 64-bit pattern: the shuffled value, or the ballot/all/any result).
unsigned long long warp_collective(Op op, Site site, unsigned mask, unsigned long long value, int arg, int width);
unsigned activemask();
[[noreturn]] void fail(const char* file, int line, const char* what);

template <class T>
T shfl(Op op, Site site, unsigned mask, T var, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move values of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    bits = warp_collective(op, site, mask, bits, arg, width);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

inline int syncthreads_count(Site site, int pred) {
    int arrived;
    return syncthreads(site, pred != 0, &arrived);
}
inline int syncthreads_and(Site site, int pred) {
    int arrived;
    return syncthreads(site, pred != 0, &arrived) == arrived;
}
inline int syncthreads_or(Site site, int pred) {
    int arrived;
    return syncthreads(site, pred != 0, &arrived) > 0;
}

// Calls a kernel with arguments passed the CUDA way: args[i] points to the value of the i-th parameter.
// The parameter types come from the kernel's own signature, so no type is ever spelled twice.
template <class... P, std::size_t... I>
void invoke(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<typename std::remove_cv<P>::type*>(args[I])...);
}
template <class... P>
void invoke(void (*kernel)(P...), void** args) {
    invoke(kernel, args, std::index_sequence_for<P...>{});
}
template <class... P>
constexpr int arity(void (*)(P...)) {
    return sizeof...(P);
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------------------------
// Built-in variables (read-only views of the launch state)
#define threadIdx (static_cast<const uint3&>(::emu::thread_idx))
#define blockIdx (static_cast<const uint3&>(::emu::block_idx))
#define blockDim (static_cast<const dim3&>(::emu::block_dim))
#define gridDim (static_cast<const dim3&>(::emu::grid_dim))

// ---------------------------------------------------------------------------------------------------------------
// Synchronisation: every call passes its site
#define EMU_SITE (::emu::Site{__FILE__, __LINE__, __COUNTER__})
#define __syncthreads() ((void)::emu::syncthreads(EMU_SITE, 0, nullptr))
#define __syncthreads_count(pred) ::emu::syncthreads_count(EMU_SITE, (pred))
#define __syncthreads_and(pred) ::emu::syncthreads_and(EMU_SITE, (pred))
#define __syncthreads_or(pred) ::emu::syncthreads_or(EMU_SITE, (pred))

namespace emu {
template <unsigned Default>
constexpr unsigned or_default() {
    return Default;
}
template <unsigned Default>
constexpr unsigned or_default(unsigned given) {
    return given;
}
inline void syncwarp(Site site, unsigned mask) { warp_collective(Op::SyncWarp, site, mask, 0, 0, 32); }
inline unsigned ballot(Site site, unsigned mask, int pred) {
    return (unsigned)warp_collective(Op::Ballot, site, mask, pred != 0, 0, 32);
}
inline int all(Site site, unsigned mask, int pred) { return (int)warp_collective(Op::All, site, mask, pred != 0, 0, 32); }
inline int any(Site site, unsigned mask, int pred) { return (int)warp_collective(Op::Any, site, mask, pred != 0, 0, 32); }
}  // namespace emu
// Optional trailing arguments (__syncwarp's mask, a shuffle's width) go through or_default(__VA_ARGS__),
// which is or_default() when they are left out - portable, unlike the GNU `, ##__VA_ARGS__` trick.
#define __syncwarp(...) ::emu::syncwarp(EMU_SITE, ::emu::or_default<0xffffffffu>(__VA_ARGS__))
#define __shfl_sync(mask, var, lane, ...) \
    ::emu::shfl(::emu::Op::ShflIdx, EMU_SITE, (mask), (var), (lane), ::emu::or_default<32>(__VA_ARGS__))
#define __shfl_up_sync(mask, var, delta, ...) \
    ::emu::shfl(::emu::Op::ShflUp, EMU_SITE, (mask), (var), (delta), ::emu::or_default<32>(__VA_ARGS__))
#define __shfl_down_sync(mask, var, delta, ...) \
    ::emu::shfl(::emu::Op::ShflDown, EMU_SITE, (mask), (var), (delta), ::emu::or_default<32>(__VA_ARGS__))
#define __shfl_xor_sync(mask, var, lane_mask, ...) \
    ::emu::shfl(::emu::Op::ShflXor, EMU_SITE, (mask), (var), (lane_mask), ::emu::or_default<32>(__VA_ARGS__))
#define __ballot_sync(mask, pred) ::emu::ballot(EMU_SITE, (mask), (pred))
#define __all_sync(mask, pred) ::emu::all(EMU_SITE, (mask), (pred))
#define __any_sync(mask, pred) ::emu::any(EMU_SITE, (mask), (pred))
#define __activemask() ::emu::activemask()

// Fences order memory between threads running at the same time; here no two threads ever do.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

#define __trap() ::emu::fail(__FILE__, __LINE__, "the kernel called __trap()")
// A failed device assert aborts the launch with a message instead of aborting the Python process
// (as long as the kernel does not include <cassert> itself, which would bring back the aborting assert).
#undef assert
#define assert(cond) ((cond) ? (void)0 : ::emu::fail(__FILE__, __LINE__, "assert(" #cond ") failed"))

// ---------------------------------------------------------------------------------------------------------------
// Atomics: plain read-modify-write, since no other thread runs while one executes. Each returns the old value.
#define EMU_ATOMIC(name, T, expr)        \
    inline T name(T* address, T val) {  \
        T old = *address;                \
        *address = (expr);               \
        return old;                      \
    }
EMU_ATOMIC(atomicAdd, float, old + val)
EMU_ATOMIC(atomicAdd, double, old + val)
EMU_ATOMIC(atomicAdd, int, old + val)
EMU_ATOMIC(atomicAdd, unsigned int, old + val)
EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
EMU_ATOMIC(atomicSub, int, old - val)
EMU_ATOMIC(atomicSub, unsigned int, old - val)
EMU_ATOMIC(atomicMax, int, old > val ? old : val)
EMU_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
EMU_ATOMIC(atomicMax, long long, old > val ? old : val)
EMU_ATOMIC(atomicMax, unsigned long long, old > val ? old : val)
EMU_ATOMIC(atomicMin, int, old < val ? old : val)
EMU_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
EMU_ATOMIC(atomicMin, long long, old < val ? old : val)
EMU_ATOMIC(atomicMin, unsigned long long, old < val ? old : val)
EMU_ATOMIC(atomicExch, int, val)
EMU_ATOMIC(atomicExch, unsigned int, val)
EMU_ATOMIC(atomicExch, unsigned long long, val)
EMU_ATOMIC(atomicExch, float, val)
EMU_ATOMIC(atomicAnd, int, old & val)
EMU_ATOMIC(atomicAnd, unsigned int, old & val)
EMU_ATOMIC(atomicOr, int, old | val)
EMU_ATOMIC(atomicOr, unsigned int, old | val)
EMU_ATOMIC(atomicXor, int, old ^ val)
EMU_ATOMIC(atomicXor, unsigned int, old ^ val)
#undef EMU_ATOMIC
inline unsigned int atomicInc(unsigned int* address, unsigned int val) {
    unsigned int old = *address;
    *address = old >= val ? 0 : old + 1;
    return old;
}
template <class T>
inline T atomicCAS(T* address, T compare, T val) {
    T old = *address;
    if (old == compare) *address = val;
    return old;
}

// ---------------------------------------------------------------------------------------------------------------
// Loads, conversions, bit tricks and fast-math intrinsics
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
// Reinterpret the bits of one 4- or 8-byte value as another type (what the CUDA intrinsics below do in a register).
template <class To, class From>
inline To emu_bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit casts keep the size");
    To out;
    std::memcpy(&out, &v, sizeof(To));
    return out;
}
inline float __int_as_float(int i) { return emu_bit_cast<float>(i); }
inline int __float_as_int(float f) { return emu_bit_cast<int>(f); }
inline float __uint_as_float(unsigned int i) { return emu_bit_cast<float>(i); }
inline unsigned int __float_as_uint(float f) { return emu_bit_cast<unsigned int>(f); }
inline double __longlong_as_double(long long i) { return emu_bit_cast<double>(i); }
inline long long __double_as_longlong(double d) { return emu_bit_cast<long long>(d); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }

// clock64() counts the SM's clock cycles on a GPU; here nanoseconds of a steady clock stand in for cycles (a
// kernel that waits a number of cycles then waits about that many nanoseconds: kernels/delay.cu)
inline long long clock64() {
    return (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

// CUDA declares min/max for every arithmetic type in the global namespace (int and unsigned mixed give unsigned).
#define EMU_MINMAX(R, A, B)                               \
    inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned int, unsigned int, unsigned int)
EMU_MINMAX(unsigned int, int, unsigned int)
EMU_MINMAX(unsigned int, unsigned int, int)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
#undef EMU_MINMAX
// ... and for floating point they are fminf/fmaxf (a NaN argument loses to a number).
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
