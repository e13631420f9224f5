"""Timing device work alone: seconds per call of a function that queues GPU work, without the Python around it.

    timer = DeviceTimer(kernels)         # a minidni.cuda.loader.Kernels (or the stand-in's)
    t = timer(lambda: ops.linear_forward(kernels, x, W, 1), repeats=50)
    t.seconds, t.host_bound

On a GPU (kernels.target == "cupy"), each measurement is:

    delay_v1 (kernels/delay.cu) holds the stream for `hold` seconds -> start event -> fn() x repeats -> stop event

While the delay runs, the host queues the repeats behind it; they then run back to back, so the time between
the events is the device's alone - not the argument checks and launch overhead of each call, which for kernels of
a few microseconds would otherwise be most of what the events saw. If the delay had already ended when the last
call was queued (the start event is done by then), the GPU may have idled between calls: the hold is raised and
the measurement repeated; if it never fills, the result says host_bound=True (fn reads back to the host, or the
host is slower than the device even with a long hold). Of `rounds` measurements the median is taken.

On the CPU emulator it is the wall clock: a check that the harness runs, which says nothing about a GPU.

What this module deliberately is not: a timer of whole training steps. A step that reads its loss back waits for
the device by design; minidni.cuda.bench times steps with plain events around them, host included.
"""

import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    seconds: float  # per call: the median of the rounds
    host_bound: bool  # the queue never filled: the figure includes time the GPU waited for the host


class DeviceTimer:
    def __init__(self, kernels, hold=0.005, rounds=3, max_hold=0.5):
        self.kernels, self.hold, self.rounds, self.max_hold = kernels, hold, rounds, max_hold

    def __call__(self, fn, repeats):
        fn()  # warm-up: compilation, allocator, caches
        if self.kernels.target != "cupy":
            times = []
            for _ in range(self.rounds):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                times.append((time.perf_counter() - t0) / repeats)
            return Timing(statistics.median(times), False)
        rounds = [self._gpu_round(fn, repeats) for _ in range(self.rounds)]
        return Timing(statistics.median(s for s, _ in rounds), any(bound for _, bound in rounds))

    def _gpu_round(self, fn, repeats):
        import cupy

        delay = self.kernels.function("delay", "delay_v1")
        cycles_per_second = _clock_hz()
        hold = self.hold
        while True:
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            delay((1,), (1,), (np.int64(hold * cycles_per_second),))
            start.record()
            for _ in range(repeats):
                fn()
            stop.record()
            filled = not start.done  # the delay still ran when the last call was queued
            stop.synchronize()
            seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
            if filled or hold >= self.max_hold:
                return seconds, not filled
            hold *= 4


def _clock_hz():
    """The SM clock (cudaDevAttrClockRate, in kHz), or 2 GHz where the driver does not report it: the hold is a
    guess either way, which the fill check above corrects."""
    import cupy

    try:
        return cupy.cuda.runtime.deviceGetAttribute(13, cupy.cuda.Device().id) * 1e3
    except cupy.cuda.runtime.CUDARuntimeError:
        return 2e9
