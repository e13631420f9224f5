"""The papers' experiments as resumable batches of runs: the feed-forward grids of Jaderberg et al. (feedforward),
the recurrent ones (recurrent), Czarnecki et al.'s small experiments (czarnecki), test error against delay
(staleness), finished runs side by side (compare), and the CPU benchmark (bench).

What this package deliberately is not: where anything is computed. Every experiment configures runs (minidni.runs,
minidni.parallel) and reads their files; the paper's numbers it prints are labelled as the paper's.
"""
