"""The DNI method: synthetic-gradient modules, decoupled blocks, the training steps and the networks built of them.

Read in this order: synthetic (the module M(h [, y]) and its regression step) -> blocks (a block's explicit
steps) -> steps (the training steps, the DNI step first: the paper's algorithm) -> network (the container that
picks its step from a table, and the paper's FCN and CNN) -> stochastic, unlock (the paper's two variants) ->
feedback (Czarnecki et al.'s view: every error signal as a synthetic gradient of some form).

What this package deliberately is not: a trainer (minidni.runs), parallel (minidni.parallel) or recurrent
(minidni.recurrent). It imports only minidni.core.
"""
