"""On paper: the bytes one cDNI training step moves through GPU memory, and the kernels it launches, fused against
unfused.

Each path is written out as the list of operations it launches, in order, with the bytes each one reads and
writes, counted the way a roofline model counts them: every operand array read once and every result written
once per launch (caches ignored). The unfused list follows the engine's code line by line (minidni.core.functional,
minidni.core.layers, minidni.core.optim, minidni.dni.synthetic, as CuPy runs them: one launch per array operation); the
fused list follows minidni.cuda.fused. docs/kernels.md prints both at the benchmark's shapes.

The network is the benchmark's: FCN with batch norm and ReLU, linear cDNI synthetic-gradient modules, Adam.
Symbols: B batch, d_in input width, D hidden width, K classes (the cDNI context and the output layer).

What this module deliberately is not: a measurement. It says what each path must move; `python -m minidni
bench --backend cupy` says how long that takes on a given GPU.
"""

F32, BOOL, I64, I32 = 4, 1, 8, 4  # bytes per element


def _op(ops, name, launches, read, write, kernel=False):
    """kernel=True marks a launch of one of minidni's own kernels (kernels/*.cu); the rest are library ops."""
    ops.append({"op": name, "launches": launches, "read": read, "write": write, "kernel": kernel})


def _adam(ops, name, N):
    """minidni.core.optim.Adam's 10 in-place passes over a flat parameter of N elements (see its docstring)."""
    reads = [1, 2, 2, 1, 2, 1, 1, 2, 1, 2]  # operands per pass: M*=, M+=g, g*g, V*=, V+=, sqrt, +eps, M/, *a, p-=
    _op(ops, f"{name}: Adam, 10 elementwise passes", 10, F32 * N * sum(reads), F32 * N * 10)


def unfused_step(B, d_in, D, K, depth=3):
    """The engine's DNI/cDNI step (minidni.dni.steps.dni_step) on CuPy arrays: (list of ops)."""
    ops = []
    n_sg = (D + K + 1) * D
    for i in range(depth - 1):
        di = d_in if i == 0 else D
        b = f"block {i}"
        _op(ops, f"{b}: z = x W (cuBLAS)", 1, F32 * (B * di + di * D), F32 * B * D)
        # functional.batchnorm_forward_train: sum, *1/B, x - mean, einsum var, *1/B, +eps, sqrt, 1/, *=inv_std,
        # *gamma, +=beta - then BatchNorm1d's six running-statistic updates
        _op(ops, f"{b}: batch norm forward (11 array ops)", 11, F32 * (7 * B * D + 9 * D), F32 * (4 * B * D + 7 * D))
        _op(ops, f"{b}: running statistics (6 array ops)", 6, F32 * 8 * D, F32 * 6 * D)
        _op(ops, f"{b}: ReLU", 1, F32 * B * D, F32 * B * D)
        # SyntheticGradient.predict: one_hot (zeros, arange, scatter), concatenate, matmul, + bias
        _op(ops, f"{b}: one-hot labels (3 ops)", 3, (I64 + I64) * B, F32 * B * K + I64 * B + F32 * B)
        _op(ops, f"{b}: [h, onehot] concatenate", 1, F32 * (B * D + B * K), F32 * B * (D + K))
        _op(ops, f"{b}: dh_syn = [h, onehot] [A; C] (cuBLAS)", 1, F32 * (B * (D + K) + (D + K) * D), F32 * B * D)
        _op(ops, f"{b}: + c", 1, F32 * (B * D + D), F32 * B * D)
        _op(ops, f"{b}: ||dh_syn|| (divergence check)", 1, F32 * 2 * B * D, F32)
        _op(ops, f"{b}: ReLU backward (mask, multiply)", 2, F32 * 2 * B * D + BOOL * B * D, (F32 + BOOL) * B * D)
        # functional.batchnorm_backward: sum, einsum, *1/B, xhat*, *1/B, +=, subtract, gamma*inv_std, *=
        _op(ops, f"{b}: batch norm backward (9 array ops)", 9, F32 * (8 * B * D + 7 * D), F32 * (4 * B * D + 5 * D))
        _op(ops, f"{b}: dW = x^T dz (cuBLAS)", 1, F32 * (B * di + B * D), F32 * di * D)
        if i > 0:
            _op(ops, f"{b}: dx = dz W^T (cuBLAS)", 1, F32 * (B * D + di * D), F32 * B * di)
        _adam(ops, b, di * D + 2 * D)
    _op(ops, "output: logits = h W (cuBLAS) + b", 2, F32 * (B * D + D * K + B * K + K), F32 * 2 * B * K)
    # functional.softmax_cross_entropy: max, subtract, exp, sum, arange, gather, log, subtract, mean, negate,
    # divide, scatter -1, /B
    _op(ops, "output: softmax cross-entropy (13 array ops)", 13, F32 * (6 * B * K + 8 * B), F32 * (4 * B * K + 8 * B))
    _op(ops, "output: dW = h^T dlogits (cuBLAS), db = sum", 2, F32 * (B * D + 2 * B * K), F32 * (D * K + K))
    _op(ops, "output: dh = dlogits W^T (cuBLAS)", 1, F32 * (B * K + D * K), F32 * B * D)
    _adam(ops, "output", (D + 1) * K)
    for i in range(depth - 1):
        m = f"module {i}"
        # functional.mse: difference, squared norm, * 2/B; then the module's Linear backward and Adam
        _op(ops, f"{m}: e = dh_syn - target, ||e||^2, * 2/B", 3, F32 * 5 * B * D, F32 * (2 * B * D + 1))
        _op(ops, f"{m}: dP = [h, onehot]^T e (cuBLAS), dc = sum", 2, F32 * (B * (D + K) + 2 * B * D), F32 * n_sg)
        _adam(ops, m, n_sg)
    return ops


def fused_step(B, d_in, D, K, depth=3):
    """minidni.cuda.fused.FusedDNIStep: (list of ops)."""
    ops = []
    n_sg = (D + K + 1) * D
    _op(ops, "labels to int32", 1, I64 * B, I32 * B)
    for i in range(depth - 1):
        di = d_in if i == 0 else D
        b = f"block {i}"
        _op(ops, f"{b}: linear_forward", 1, F32 * (B * di + di * D), F32 * B * D, kernel=True)
        # batchnorm.cu walks each column three times (mean, variance, write) and, backward, twice (sums, write)
        _op(
            ops,
            f"{b}: bn_forward_train (+ReLU, running stats)",
            1,
            F32 * (3 * B * D + 4 * D),
            F32 * (2 * B * D + 3 * D),
            kernel=True,
        )
        _op(ops, f"{b}: sg_predict (+ReLU')", 1, F32 * (2 * B * D + n_sg) + I32 * B, F32 * 2 * B * D, kernel=True)
        _op(ops, f"{b}: ||dh_syn|| (divergence check)", 1, F32 * 2 * B * D, F32)
        _op(ops, f"{b}: bn_backward", 1, F32 * (4 * B * D + 2 * D), F32 * (B * D + 2 * D), kernel=True)
        if i > 0:
            _op(ops, f"{b}: dx = dz W^T (cuBLAS)", 1, F32 * (B * D + di * D), F32 * B * di)
        _op(ops, f"{b}: layer_update_adam", 1, F32 * (B * di + B * D + 3 * di * D), F32 * 3 * di * D, kernel=True)
        _op(ops, f"{b}: adam_step (gamma, beta)", 1, F32 * 4 * 2 * D, F32 * 3 * 2 * D, kernel=True)
    _op(ops, "output: linear_forward", 1, F32 * (B * D + (D + 1) * K), F32 * B * K, kernel=True)
    _op(ops, "output: softmax_xent", 1, F32 * B * K + I32 * B, F32 * (B * K + B), kernel=True)
    _op(ops, "output: dh = dlogits W^T (cuBLAS)", 1, F32 * (B * K + D * K), F32 * B * D)
    _op(
        ops, "output: layer_update_adam", 1, F32 * (B * D + B * K + 3 * (D + 1) * K), F32 * 3 * (D + 1) * K, kernel=True
    )
    _op(ops, "output: mean loss", 1, F32 * B, F32)
    for i in range(depth - 1):
        m = f"module {i}"
        _op(ops, f"{m}: zero the loss", 1, 0, F32)
        _op(
            ops,
            f"{m}: sg_update_adam (+loss)",
            1,
            F32 * (3 * B * D + 3 * n_sg) + I32 * B,
            F32 * (3 * n_sg + 1),
            kernel=True,
        )
    return ops


def totals(ops):
    return {
        "launches": sum(o["launches"] for o in ops),
        "kernel_launches": sum(o["launches"] for o in ops if o["kernel"]),
        "MB": round(sum(o["read"] + o["write"] for o in ops) / 1e6, 2),
    }


def compare(B=256, d_in=784, D=256, K=10, depth=3):
    """Both paths' totals and their ratio."""
    u, f = totals(unfused_step(B, d_in, D, K, depth)), totals(fused_step(B, d_in, D, K, depth))
    return {
        "shape": {"B": B, "d_in": d_in, "D": D, "K": K, "depth": depth},
        "unfused": u,
        "fused": f,
        "bytes_ratio": round(u["MB"] / f["MB"], 2),
        "launch_ratio": round(u["launches"] / f["launches"], 2),
    }
