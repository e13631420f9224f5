"""Recurrent networks and DNI through time: cells and BPTT (cells), truncated BPTT with a synthetic gradient at
each boundary (truncated), the copy tasks (tasks), and two networks on two timescales linked by a DNI (multinet).

What this package deliberately is not: a run with files and a command line (minidni.runs.rnn_train) or the
paper's experiment grids (minidni.experiments.recurrent). It builds on minidni.core, minidni.dni and minidni.data.
"""
