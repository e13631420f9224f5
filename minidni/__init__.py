"""minidni: synthetic gradients and Decoupled Neural Interfaces (DNI), from scratch, written to be read.

Read it top-down: backend -> functional (the math) -> layers -> optim -> synthetic (SG modules) -> dni (decoupled
blocks and training modes) -> train (runs, metrics, checkpoints) -> cli.
"""

__version__ = "0.1.0"
