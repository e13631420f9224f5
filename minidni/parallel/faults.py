"""Fault injection for the error paths of minidni.parallel.workers: a worker that dies, or hangs, at a chosen step.

    MINIDNI_WORKER_CRASH=BLOCK:STEP        block BLOCK's worker exits abruptly (exit code 3, no message) when it
                                           reaches step STEP, the way a killed process dies
    MINIDNI_WORKER_CRASH=BLOCK:STEP:hang   it stops answering instead: alive but silent, until its neighbours'
                                           bounded waits (wait_timeout) give up on it

The tests and tutorial 16 use it to show that a run in workers always ends, with the failing block named. A whole
process has to die for this to mean anything, so threads refuse it.

What this module deliberately is not: part of the worker loop's logic. The loop asks `fail_here` once per step;
without the variable set that is a comparison with None.
"""

import os
import time

CRASH_ENV = "MINIDNI_WORKER_CRASH"


def crash_plan(block):
    """(step, "die" | "hang") at which CRASH_ENV makes `block`'s worker fail, or None."""
    parts = os.environ.get(CRASH_ENV, "").split(":")
    if len(parts) in (2, 3) and parts[0].isdigit() and int(parts[0]) == block and parts[1].isdigit():
        return int(parts[1]), parts[2] if len(parts) == 3 else "die"
    return None


def refuse_in_threads():
    """CRASH_ENV kills a process: with every block a thread of one process it would kill the whole run silently."""
    if os.environ.get(CRASH_ENV):
        raise ValueError(f"{CRASH_ENV} kills a whole process: use it with process workers or MPI, not threads")


def fail_here(plan, step, wait_timeout):
    """At the planned step (plan from crash_plan), hang for ten times the neighbours' wait, then die."""
    if plan is None or step != plan[0]:
        return
    if plan[1] == "hang":  # stuck, alive but silent
        time.sleep(10 * wait_timeout)
    os._exit(3)  # ... or dead, the way a killed process dies: without a word
