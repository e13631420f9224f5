"""Decoupling for real: every block in a worker of its own (workers: processes, threads or MPI ranks), fault
injection for its error paths (faults), a discrete-event simulator of the worker loops (simulate), and the parallel
benchmark that checks the simulator against real runs (speedup).

What this package deliberately is not: a different algorithm. The workers run the same block methods as
minidni.dni.steps; a run in workers is configured like any run (minidni.runs.train.TrainConfig).
"""
