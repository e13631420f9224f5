"""BLAS threads, chosen on purpose: how many threads NumPy's matrix products may use.

    limiter = use_blas_threads(1)      # from now on; limiter.restore_original_limits() undoes it
    with use_blas_threads(2):          # or only inside the block
        train(cfg)

OpenBLAS starts as many threads as the machine has cores and spins them while it waits. On a quiet 2-core machine
two threads make minidni's matrix products a little faster; on a busy one (another run, a test suite, a browser)
the two threads fight the other work for both cores and a run becomes several times slower (measured in
docs/results.md: about 3.5x with two busy loops on the 2 cores, against about 1.5x with one thread). So minidni
chooses instead of inheriting: the trainer, the experiments and the tutorials run with DEFAULT_THREADS unless told
otherwise (`--threads N`), and a run records the number it used in config.json.

Changing the thread count changes the order of the floating-point sums inside a matrix product, so the last
digits of a run's numbers can move (a test error by a few hundredths of a percent after 10 epochs); a run with the
same thread count is repeatable bit for bit.

threadpoolctl (a dependency) does the work: it finds every BLAS library loaded in the process (OpenBLAS, MKL,
BLIS) and sets each one's thread count through its own API, which environment variables cannot do once NumPy is
imported.
"""

DEFAULT_THREADS = 1  # does not collapse when the machine is busy; --threads 2 is faster only on a quiet machine


def check_threads(n):
    """n as an int if it is a usable thread count; ValueError saying what was expected otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a whole number >= 1 (BLAS threads for the matrix products), got {n!r}")
    return n


def use_blas_threads(n=DEFAULT_THREADS):
    """Limit every BLAS library in this process to n threads, from now on or (as a context manager) inside a
    `with` block. Returns threadpoolctl's limiter; its restore_original_limits() puts the old counts back."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=check_threads(n), user_api="blas")


def blas_threads():
    """The largest thread count of the BLAS libraries loaded now (None if threadpoolctl finds none)."""
    from threadpoolctl import threadpool_info

    counts = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(counts) if counts else None
