"""The textbook core: arrays, the math, layers and optimisers - everything a network needs before DNI.

    backend     NumPy or CuPy, chosen in one place
    functional  every forward and backward as a plain function with an explicit cache; the shape glossary
    layers      layers that own their parameters, gradients and optimiser; caches are values the caller holds
    optim       SGD with momentum, Adam, the step schedule: one optimiser per layer, so every block updates alone
    gradcheck   float64 central differences, the proof of every backward

What this package deliberately is not: about synthetic gradients. It imports nothing else from minidni; the DNI
method (minidni.dni) is built on it.
"""
