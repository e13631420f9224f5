// fiber.cpp - the CPU emulator's scheduler: runs a CUDA launch block by block, one fiber per CUDA thread.
//
// A fiber is a function call with its own stack that can pause in the middle and be resumed later. Each CUDA
// thread of a block becomes one fiber; a single OS thread (the caller's) runs them one at a time:
//
//   scheduler:  a pass runs every runnable fiber in thread order: each runs until it waits (a barrier, a warp
//               collective) or returns from the kernel, then switches straight to the next runnable fiber; the
//               last one switches back to the scheduler.
//               when none is runnable: release whatever can be released (below); if nothing can, that is a
//               deadlock, and the launch stops with a message naming every waiting thread.
//
//   barrier rule (__syncthreads): released when every LIVE thread of the block waits at a barrier - threads that
//               returned from the kernel no longer count, as on sm_70 and later. Live threads all waiting, but at
//               different __syncthreads() calls, is a divergent barrier: an error, not a release.
//   warp rule (__syncwarp, __shfl_*_sync, __ballot_sync, __all_sync, __any_sync): a collective involves only the
//               lanes of the caller's warp named in its mask, and completes when all of them wait at the same
//               call with the same mask. A mask naming a lane that does not exist (a partial last warp) or has
//               exited can never complete: that is reported, not waited on.
//
// Warps are groups of 32 consecutive linear thread ids (x fastest, then y, then z), as on a GPU.
//
// What this is deliberately not: parallel, preemptive or fair. A thread runs until it waits, so a spin-wait on a
// flag set by another thread never ends; and threads of one block run in id order between barriers, so a missing
// barrier shows up as a deterministic wrong answer rather than an intermittent one.
//
// Switching fibers is a hand-written x86-64 register swap (about 15 instructions, no system call): ~20 ns per
// barrier arrival per thread. On other CPUs, or when built with -DEMU_USE_UCONTEXT, it is swapcontext: portable,
// but it saves the signal mask with a system call on every switch, ~700 ns per arrival.
#include "runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

// ===============================================================================================================
// 1. Contexts: saving the registers of one fiber and loading another's.
#if EMU_ASM_SWITCH
// emu_switch_stack(save_sp, load_sp): push the callee-saved registers (the only ones a function call must
// preserve), store the stack pointer in *save_sp, load load_sp, pop that fiber's registers and return into it.
// MXCSR and the x87 control word are not swapped: every fiber shares the caller's rounding mode.
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
    .pushsection .text
    .globl emu_switch_stack
    .hidden emu_switch_stack
    .type emu_switch_stack, @function
    .p2align 4
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
    .popsection
)");
#endif

namespace emu {

// The launch state that runtime.h's macros read.
uint3 thread_idx;
uint3 block_idx;
dim3 block_dim;
dim3 grid_dim;
void* dynamic_smem;

namespace {

#if EMU_ASM_SWITCH
struct Context {
    void* sp;
};
void switch_context(Context* from, Context* to) { emu_switch_stack(&from->sp, to->sp); }
// A new fiber's stack is laid out as if it had called emu_switch_stack: six zeroed registers, then the address
// that `ret` jumps to (entry), then a null return address for entry itself, which never returns. The top is
// 16-byte aligned, so entry starts with the stack pointer at 8 mod 16, exactly as after a `call`.
void make_context(Context* c, char* stack_lo, size_t stack_size, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack_lo + stack_size) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(entry);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    c->sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};
void switch_context(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }
void make_context(Context* c, char* stack_lo, size_t stack_size, void (*entry)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack_lo;
    c->uc.uc_stack.ss_size = stack_size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
}
#endif

// AddressSanitizer tracks which stack it is on; it must be told before and after every switch.
void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if EMU_ASAN
    __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
    (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
void asan_finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
    (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

// ===============================================================================================================
// 2. Stacks: mmap'ed, with an inaccessible guard page below each, so an overflow faults instead of silently
// overwriting a neighbour. They are kept for the next block and launch; memory is only committed when touched.
size_t stack_size() {
    static size_t size = [] {
        size_t kib = EMU_ASAN ? 256 : 64;  // ASan's red zones make frames several times larger
        if (const char* env = getenv("MINIDNI_EMU_STACK_KB")) kib = strtoul(env, nullptr, 10);
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        return (kib * 1024 + page - 1) / page * page;
    }();
    return size;
}

std::vector<char*> stack_pool;  // usable low ends; the guard page lies just below each

bool grow_stack_pool(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    while (stack_pool.size() < n) {
        void* p = mmap(nullptr, stack_size() + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, page, PROT_NONE);
        stack_pool.push_back(static_cast<char*>(p) + page);
    }
    return true;
}

// ===============================================================================================================
// 3. Fibers and the launch
enum class State : unsigned char { Runnable, AtBarrier, AtWarp, Exited };

struct Fiber {
    Context context;
    char* stack_lo;
    uint3 idx;     // threadIdx
    unsigned tid;  // linear id: x + y*blockDim.x + z*blockDim.x*blockDim.y
    State state;
    // What a waiting fiber waits at, what it brought, and (once released) what it gets back.
    Site site;
    Op op;
    unsigned mask;
    unsigned long long value;
    int arg, width;
    unsigned long long result;
    int arrived;  // threads released together by a barrier
    void* asan_fake_stack;
};

enum Status { kOk = 0, kDeadlock = 1, kError = 2 };

struct Launch {
    void (*kernel)(void**);
    void** args;
    unsigned n_threads, n_warps;
    std::vector<Fiber> fibers;
    Fiber* current;
    Context scheduler;
    bool from_scheduler;  // whether the running fiber was entered from the scheduler (for ASan)
    unsigned n_exited, n_at_barrier, n_at_warp;
    int status;
    char message[16384];
    const void* scheduler_stack_bottom;  // for ASan
    size_t scheduler_stack_size;
    void* scheduler_fake_stack;
} L;

// Messages -----------------------------------------------------------------------------------------------------
void set_message(int status, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L.message, sizeof L.message, fmt, ap);
    va_end(ap);
    L.status = status;
}

const char* op_name(Op op) {
    switch (op) {
        case Op::SyncWarp: return "__syncwarp";
        case Op::ShflIdx: return "__shfl_sync";
        case Op::ShflUp: return "__shfl_up_sync";
        case Op::ShflDown: return "__shfl_down_sync";
        case Op::ShflXor: return "__shfl_xor_sync";
        case Op::Ballot: return "__ballot_sync";
        case Op::All: return "__all_sync";
        case Op::Any: return "__any_sync";
    }
    return "?";
}

std::string format(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

std::string lane_list(unsigned bits) {  // 0x0000ffff -> "0-15"
    std::string out;
    for (int i = 0; i < 32;) {
        if (!(bits >> i & 1)) {
            ++i;
            continue;
        }
        int j = i;
        while (j + 1 < 32 && (bits >> (j + 1) & 1)) ++j;
        out += (out.empty() ? "" : ",") + (i == j ? format("%d", i) : format("%d-%d", i, j));
        i = j + 1;
    }
    return out;
}

// "threads 0-15, 32-47" - linear ids compressed into ranges; for 2-D/3-D blocks each range also as threadIdx.
std::string thread_list(const std::vector<unsigned>& ids) {
    bool multi_dim = block_dim.y > 1 || block_dim.z > 1;
    std::string out = ids.size() == 1 ? "thread " : "threads ";
    size_t shown = 0;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        if (shown++ == 8) {
            out += ", ...";
            break;
        }
        const uint3 &a = L.fibers[ids[i]].idx, &b = L.fibers[ids[j]].idx;
        out += i ? ", " : "";
        out += i == j ? format("%u", ids[i]) : format("%u-%u", ids[i], ids[j]);
        if (multi_dim)
            out += i == j ? format(" (%u,%u,%u)", a.x, a.y, a.z)
                          : format(" (%u,%u,%u)..(%u,%u,%u)", a.x, a.y, a.z, b.x, b.y, b.z);
        i = j + 1;
    }
    return out;
}

// What a thread waits at, with the verb for one thread and for several: "waits at __syncthreads() at k.cu:12".
std::string waiting_on(const Fiber& f, bool several) {
    if (f.state == State::Exited) return several ? "have exited" : "has exited";
    std::string verb = several ? "wait at " : "waits at ";
    if (f.state == State::AtBarrier) return verb + format("__syncthreads() at %s:%d", f.site.file, f.site.line);
    return verb + format("%s(mask 0x%08x) at %s:%d", op_name(f.op), f.mask, f.site.file, f.site.line);
}

// One line per distinct wait, in order of first appearance, naming the threads that wait there.
std::string describe_threads(bool include_exited) {
    std::vector<std::string> keys;
    std::vector<std::vector<unsigned>> ids;
    for (const Fiber& f : L.fibers) {
        if (f.state == State::Exited && !include_exited) continue;
        std::string key = waiting_on(f, false);
        size_t k = 0;
        while (k < keys.size() && keys[k] != key) ++k;
        if (k == keys.size()) keys.push_back(key), ids.emplace_back();
        ids[k].push_back(f.tid);
    }
    std::string out;
    for (size_t k = 0; k < keys.size(); ++k) {
        const Fiber& first = L.fibers[ids[k][0]];
        out += "\n  " + thread_list(ids[k]) + " " + waiting_on(first, ids[k].size() > 1);
    }
    if (block_dim.y > 1 || block_dim.z > 1)
        out += "\n  (thread numbers are linear ids x + y*blockDim.x + z*blockDim.x*blockDim.y)";
    return out;
}

std::string where() {
    return format("block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u)", block_idx.x, block_idx.y,
                  block_idx.z, grid_dim.x, grid_dim.y, grid_dim.z, block_dim.x, block_dim.y, block_dim.z);
}

// Switching ----------------------------------------------------------------------------------------------------
// Fibers are entered from the scheduler (resume) or directly from the previous fiber of a pass (pass_on), and
// leave to the next fiber (pass_on) or to the scheduler (yield_to_scheduler). ASan must learn the scheduler's own
// stack, which it reports only on an arrival from the scheduler.
void arrived_in_fiber(Fiber* self) {
    bool from_scheduler = L.from_scheduler;
    asan_finish_switch(self ? self->asan_fake_stack : nullptr, from_scheduler ? &L.scheduler_stack_bottom : nullptr,
                       from_scheduler ? &L.scheduler_stack_size : nullptr);
}

void resume(Fiber* f) {  // scheduler -> fiber
    L.current = f;
    L.from_scheduler = true;
    thread_idx = f->idx;
    asan_start_switch(&L.scheduler_fake_stack, f->stack_lo, stack_size());
    switch_context(&L.scheduler, &f->context);
    asan_finish_switch(L.scheduler_fake_stack, nullptr, nullptr);
}

void yield_to_scheduler(bool forever) {  // fiber -> scheduler; `forever` when it will never be resumed
    Fiber* self = L.current;
    asan_start_switch(forever ? nullptr : &self->asan_fake_stack, L.scheduler_stack_bottom, L.scheduler_stack_size);
    switch_context(&self->context, &L.scheduler);
    arrived_in_fiber(self);
}

// A fiber that starts waiting (or exits) hands the CPU straight to the next runnable fiber of the pass: one
// switch per arrival instead of two through the scheduler. After the last runnable fiber, back to the scheduler.
void pass_on(bool forever) {
    Fiber* self = L.current;
    Fiber* end = L.fibers.data() + L.n_threads;
    Fiber* next = self + 1;
    while (next < end && next->state != State::Runnable) ++next;
    if (next == end) return yield_to_scheduler(forever);
    L.current = next;
    L.from_scheduler = false;
    thread_idx = next->idx;
    asan_start_switch(forever ? nullptr : &self->asan_fake_stack, next->stack_lo, stack_size());
    switch_context(&self->context, &next->context);
    arrived_in_fiber(self);
}

void fiber_main() {
    arrived_in_fiber(nullptr);
    L.kernel(L.args);
    L.current->state = State::Exited;
    L.n_exited++;
    pass_on(true);
    __builtin_unreachable();
}

// An error inside a fiber: record it and hand control back for good; the scheduler abandons the launch.
[[noreturn]] void fail_in_fiber(int status, const std::string& what) {
    const uint3& t = L.current->idx;
    set_message(status, "thread (%u,%u,%u) of %s: %s", t.x, t.y, t.z, where().c_str(), what.c_str());
    yield_to_scheduler(true);
    __builtin_unreachable();
}

// The warp rule ------------------------------------------------------------------------------------------------
unsigned existing_lanes(unsigned warp) {  // a partial last warp has fewer than 32 lanes
    unsigned n = L.n_threads - warp * 32;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

// The source lane of a shuffle, as PTX's shfl.sync defines it: width splits the warp into segments; up/down/xor
// reading outside the caller's segment (pval false) return the caller's own value.
unsigned shuffle_source(Op op, unsigned lane, int arg, int width) {
    unsigned segment = 32u - width;  // the high lane bits that name the segment
    unsigned b = unsigned(arg) & 31u;
    int first = int(lane & segment), last = int((lane & segment) | (31u & ~segment));
    int j;
    switch (op) {
        case Op::ShflUp: j = int(lane) - int(b); return j >= first ? unsigned(j) : lane;
        case Op::ShflDown: j = int(lane + b); return j <= last ? unsigned(j) : lane;
        case Op::ShflXor: j = int(lane ^ b); return j <= last ? unsigned(j) : lane;
        default: return (lane & segment) | (b & ~segment);
    }
}

// All lanes in `mask` of warp `w` wait at the same collective: compute every lane's result and release them.
void complete_collective(unsigned w, unsigned mask) {
    Fiber* lanes = &L.fibers[w * 32];
    const Fiber& first = lanes[__builtin_ctz(mask)];
    unsigned votes = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (mask >> l & 1 && lanes[l].value) votes |= 1u << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1)) continue;
        Fiber& f = lanes[l];
        switch (first.op) {
            case Op::SyncWarp: f.result = 0; break;
            case Op::Ballot: f.result = votes; break;
            case Op::All: f.result = votes == mask; break;
            case Op::Any: f.result = votes != 0; break;
            default: {
                unsigned src = shuffle_source(f.op, l, f.arg, f.width);
                // Reading a lane outside the mask is undefined on a GPU; here it reads all-ones bits (NaN, -1).
                f.result = src == l ? f.value : (mask >> src & 1) ? lanes[src].value : ~0ull;
            }
        }
        f.state = State::Runnable;
        L.n_at_warp--;
    }
}

// Releases every warp collective whose lanes have all arrived; returns whether any was released.
bool release_warp_collectives() {
    bool released = false;
    for (unsigned w = 0; w < L.n_warps && L.status == kOk; ++w) {
        for (unsigned l = 0; l < 32 && w * 32 + l < L.n_threads; ++l) {
            const Fiber& f = L.fibers[w * 32 + l];
            if (f.state != State::AtWarp) continue;
            for (unsigned m = 0; m < 32; ++m) {
                if (f.mask >> m & 1 && L.fibers[w * 32 + m].state == State::Exited) {
                    set_message(kDeadlock,
                                "%s in %s: thread %u (lane %u of warp %u) waits at %s(mask 0x%08x) at %s:%d, but "
                                "lane %u named in the mask has already exited, so the collective can never "
                                "complete. Name only the lanes that take part (e.g. from __ballot_sync before the "
                                "branch).%s",
                                op_name(f.op), where().c_str(), f.tid, l, w, op_name(f.op), f.mask, f.site.file,
                                f.site.line, m, describe_threads(true).c_str());
                    return false;
                }
            }
            bool complete = true;
            for (unsigned m = 0; m < 32 && complete; ++m) {
                const Fiber& g = L.fibers[w * 32 + m];
                if (f.mask >> m & 1)
                    complete = g.state == State::AtWarp && g.site.id == f.site.id && g.mask == f.mask;
            }
            if (complete) {
                complete_collective(w, f.mask);
                released = true;
            }
        }
    }
    return released;
}

// A deadlock where the lanes of one mask all wait, but at different collectives (or with different masks).
bool report_divergent_collective() {
    for (const Fiber& f : L.fibers) {
        if (f.state != State::AtWarp) continue;
        unsigned w = f.tid / 32;
        bool all_waiting = true, same = true;
        for (unsigned m = 0; m < 32; ++m) {
            if (!(f.mask >> m & 1)) continue;
            const Fiber& g = L.fibers[w * 32 + m];
            all_waiting &= g.state == State::AtWarp;
            same &= g.state == State::AtWarp && g.site.id == f.site.id && g.mask == f.mask;
        }
        if (all_waiting && !same) {
            set_message(kDeadlock,
                        "divergent warp collective in %s, warp %u: the lanes named by mask 0x%08x all wait, but "
                        "at different warp collectives (or with different masks), so none can complete. Every "
                        "lane in a mask must reach the same call with the same mask.%s",
                        where().c_str(), w, f.mask, describe_threads(false).c_str());
            return true;
        }
    }
    return false;
}

// The barrier rule ---------------------------------------------------------------------------------------------
// Called when every live thread waits at a __syncthreads(). Releases them if it is one and the same call.
bool release_barrier() {
    const Fiber* first = nullptr;
    int votes = 0;
    for (const Fiber& f : L.fibers) {
        if (f.state != State::AtBarrier) continue;
        if (!first) first = &f;
        if (f.site.id != first->site.id) {
            set_message(kDeadlock,
                        "divergent __syncthreads() in %s: all %u live threads wait at a barrier, but not at the "
                        "same one. On a GPU this is undefined behaviour (a hang or silently wrong results): every "
                        "live thread of a block must reach the same __syncthreads() call.%s",
                        where().c_str(), L.n_threads - L.n_exited, describe_threads(false).c_str());
            return false;
        }
        votes += f.value != 0;
    }
    for (Fiber& f : L.fibers) {
        if (f.state != State::AtBarrier) continue;
        f.result = (unsigned long long)votes;
        f.arrived = int(L.n_at_barrier);
        f.state = State::Runnable;
    }
    L.n_at_barrier = 0;
    return true;
}

// The scheduler ------------------------------------------------------------------------------------------------
int run_block() {
    L.n_exited = L.n_at_barrier = L.n_at_warp = 0;
    for (unsigned t = 0; t < L.n_threads; ++t) {
        Fiber& f = L.fibers[t];
        f = Fiber{};
        f.tid = t;
        f.idx = {t % block_dim.x, t / block_dim.x % block_dim.y, t / (block_dim.x * block_dim.y)};
        f.stack_lo = stack_pool[t];
        f.state = State::Runnable;
#if EMU_ASAN
        // An abandoned fiber may have left poisoned red zones behind on this stack.
        ASAN_UNPOISON_MEMORY_REGION(f.stack_lo, stack_size());
#endif
        make_context(&f.context, f.stack_lo, stack_size(), fiber_main);
    }
    for (;;) {
        for (Fiber& f : L.fibers) {
            if (f.state != State::Runnable) continue;
            resume(&f);
            if (L.status != kOk) return L.status;
        }
        unsigned live = L.n_threads - L.n_exited;
        if (live == 0) return kOk;
        if (L.n_at_warp > 0 && release_warp_collectives()) continue;
        if (L.status != kOk) return L.status;
        if (L.n_at_barrier == live) {
            if (release_barrier()) continue;
            return L.status;
        }
        if (!report_divergent_collective())
            set_message(kDeadlock, "deadlock in %s: no thread can run, and the block has not finished.%s",
                        where().c_str(), describe_threads(true).c_str());
        return L.status;
    }
}

}  // namespace

// ===============================================================================================================
// 4. The entry points called by kernels (through runtime.h) and by Python (through ctypes)
int syncthreads(Site site, int pred, int* arrived) {
    Fiber* f = L.current;
    f->state = State::AtBarrier;
    f->site = site;
    f->value = pred != 0;
    L.n_at_barrier++;
    pass_on(false);
    if (arrived) *arrived = f->arrived;
    return int(f->result);
}

unsigned long long warp_collective(Op op, Site site, unsigned mask, unsigned long long value, int arg, int width) {
    Fiber* f = L.current;
    unsigned lane = f->tid % 32, warp = f->tid / 32;
    if (!(mask >> lane & 1))
        fail_in_fiber(kError, format("%s at %s:%d: mask 0x%08x does not name the calling lane %u", op_name(op),
                                     site.file, site.line, mask, lane));
    unsigned missing = mask & ~existing_lanes(warp);
    if (missing)
        fail_in_fiber(kDeadlock,
                      format("%s at %s:%d: mask 0x%08x names lanes %s of warp %u, which do not exist: the block "
                             "has %u threads, so this warp has only %u lanes. A collective waits for every lane in "
                             "its mask, so on a GPU this never completes (or is undefined). Pass the mask of the "
                             "lanes that exist (here 0x%08x, e.g. from __ballot_sync or __activemask()).",
                             op_name(op), site.file, site.line, mask, lane_list(missing).c_str(), warp,
                             L.n_threads, (unsigned)__builtin_popcount(existing_lanes(warp)), existing_lanes(warp)));
    bool is_shuffle = op == Op::ShflIdx || op == Op::ShflUp || op == Op::ShflDown || op == Op::ShflXor;
    if (is_shuffle && (width < 1 || width > 32 || (width & (width - 1))))
        fail_in_fiber(kError, format("%s at %s:%d: width %d is not a power of two between 1 and 32", op_name(op),
                                     site.file, site.line, width));
    f->state = State::AtWarp;
    f->op = op;
    f->site = site;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = width;
    L.n_at_warp++;
    pass_on(false);
    return f->result;
}

unsigned activemask() {
    // No divergence is tracked, so "active" means every lane of the warp that has not exited.
    unsigned warp = L.current->tid / 32, mask = 0;
    for (unsigned l = 0; l < 32 && warp * 32 + l < L.n_threads; ++l)
        if (L.fibers[warp * 32 + l].state != State::Exited) mask |= 1u << l;
    return mask;
}

void fail(const char* file, int line, const char* what) { fail_in_fiber(kError, format("%s at %s:%d", what, file, line)); }

}  // namespace emu

using namespace emu;

// Runs kernel(args) over the whole grid. Returns 0 (finished), 1 (deadlock) or 2 (another error), with the
// explanation in `message`. Dynamic shared memory is `shared_bytes` of 0xff (NaN) followed by a canary of 0xff
// that the kernel must not touch; both are re-poisoned before each block.
EMU_EXPORT int emu_launch(void (*kernel)(void**), void** args, const unsigned* grid, const unsigned* block,
                          unsigned long long shared_bytes, char* message, unsigned long long message_size) {
    constexpr size_t kCanary = 64, kAlign = 64;
    L.kernel = kernel;
    L.args = args;
    L.status = kOk;
    L.message[0] = '\0';
    grid_dim = dim3(grid[0], grid[1], grid[2]);
    block_dim = dim3(block[0], block[1], block[2]);
    L.n_threads = block[0] * block[1] * block[2];
    L.n_warps = (L.n_threads + 31) / 32;
    L.fibers.assign(L.n_threads, Fiber{});

    size_t smem_total = (shared_bytes + kCanary + kAlign - 1) / kAlign * kAlign;
    char* smem = static_cast<char*>(aligned_alloc(kAlign, smem_total));
    if (!grow_stack_pool(L.n_threads) || !smem)
        set_message(kError, "out of memory: could not allocate %u fiber stacks of %zu KiB and %llu bytes of "
                    "dynamic shared memory", L.n_threads, stack_size() / 1024, shared_bytes);
    dynamic_smem = smem;
    char* canary = smem + shared_bytes;

    for (unsigned z = 0; z < grid[2] && L.status == kOk; ++z)
        for (unsigned y = 0; y < grid[1] && L.status == kOk; ++y)
            for (unsigned x = 0; x < grid[0] && L.status == kOk; ++x) {
                block_idx = {x, y, z};
                // The canary stays readable under ASan too: an overrun is the same EmulatorError in both builds.
                memset(smem, 0xff, smem_total);
                if (run_block() != kOk) break;
                for (size_t i = 0; i < kCanary; ++i)
                    if (static_cast<unsigned char>(canary[i]) != 0xff) {
                        set_message(kError, "the kernel wrote past the end of its dynamic shared memory of %llu "
                                    "bytes (byte %llu was written) in %s: launch with a larger shared_mem, or "
                                    "fix the indexing of the extern __shared__ array", shared_bytes,
                                    shared_bytes + i, where().c_str());
                        break;
                    }
            }
    free(smem);
    dynamic_smem = nullptr;
    snprintf(message, message_size, "%s", L.message);
    return L.status;
}
