// delay.cu - a kernel that only waits: how the GPU benchmark times device work and nothing else.
//
// Bracketing N launches with two CUDA events times the GPU only if the launches reach it faster than it runs
// them. minidni's launchers check their arguments in Python first (tens of microseconds a call), longer than
// many of its kernels run, so the GPU would idle between them and the events would time Python. Launched just
// before the start event, delay_v1 holds the stream for `cycles` clock cycles while the host queues the N launches
// behind it; they then run back to back, and the events time the device alone. minidni.cuda.timing checks that
// the queue was full before the delay ended, and waits longer if it was not.
//
// One thread; no reference and no output: what it does is take time (on the CPU emulator, clock64() counts
// nanoseconds). clock64() is a volatile read of the SM's cycle counter, so the loop is not optimised away.
extern "C" __global__ void delay_v1(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {
    }
}
