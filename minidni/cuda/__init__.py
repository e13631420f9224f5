"""minidni's GPU path: hand-written CUDA kernels (kernels/*.cu), how they are compiled and launched, and how
they are tested on machines without a GPU.

    loader     reads a kernel file and builds it for a target: CuPy on a GPU, or the CPU emulator
    nvrtc      drives NVRTC (the compiler CuPy uses) with CuPy's exact options, to compile kernels with no GPU
    emulator   runs the unchanged .cu files on the CPU, one fiber per CUDA thread, to test them without a GPU
    reference  the NumPy reference of every kernel, written with minidni's own math
    ops, norm_ops, unfused   the launchers, and each launcher's alternative in the array library's own ops
    fused      the DNI/cDNI step through the kernels; autotune picks kernel or unfused per operation and shape
    timing, bench            device time alone, and the GPU benchmark built on it
    cupy_api, cupy_audit, cupy_standin   what CuPy accepts, every array call checked against it, and the engine
               run on NumPy arrays held to CuPy's rules - the GPU path's Python checked without a GPU

`python -m minidni doctor` (minidni.doctor, above every layer because it also runs a short training run) says in
one command whether this path works on a machine.

What this package deliberately is not: a second engine. The fused step computes exactly minidni.dni.steps.dni_step;
the package sits above minidni.dni (it runs its networks) and below the runs that attach it (use_kernels).
"""
