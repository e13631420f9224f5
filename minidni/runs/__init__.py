"""A run in one process: its configuration, the training loops (feed-forward: train; recurrent: rnn_train),
checkpoints and bit-identical resume, metrics, learning curves (plots), and the timeline of which block computed
what and when (timeline).

What this package deliberately is not: parallel. Blocks in workers of their own are minidni.parallel, which builds
on these runs (train() refuses a config with workers set and says which trainer runs it).
"""
