"""minidni's GPU path: hand-written CUDA kernels (kernels/*.cu), how they are compiled and launched, and how
they are tested on machines without a GPU.

    loader     reads a kernel file and builds it for a target: CuPy on a GPU, or the CPU emulator
    nvrtc      drives NVRTC (the compiler CuPy uses) through ctypes, to compile and inspect kernels with no GPU
    emulator   runs the unchanged .cu files on the CPU, one fiber per CUDA thread, to test them without a GPU
    reference  the NumPy reference of every kernel, written with minidni's own math
"""
