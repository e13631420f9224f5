"""The resource table: registers, shared memory, spills and stack of every kernel in kernels/*.cu, per GPU arch.

Each .cu file is compiled with NVRTC exactly as CuPy compiles it on a GPU (see nvrtc.py), with ptxas' verbose
report, and the numbers are read from that report. No GPU is needed, so the docs and the CLI
(`python -m minidni kernels report`) can show the table anywhere.

This deliberately is not a benchmark or an occupancy calculator: it reports what the compiler allocated, which is
what tells a reader whether a kernel spills or is register-hungry, not how fast it runs.
"""

import re
from pathlib import Path

from minidni.cuda import nvrtc
from minidni.cuda.includes import included_headers
from minidni.cuda.loader import kernel_files

COLUMNS = ("file", "kernel", "arch", "registers", "shared_bytes", "spill_stores", "spill_loads", "stack_frame")


def _strip_comments(source):
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.DOTALL)


# Attributes that may sit between `__global__` and the name, and whose parentheses would confuse the name match.
_ATTRIBUTES = re.compile(r"__(launch_bounds|maxnreg|cluster_dims)__\s*\([^)]*\)|__attribute__\s*\(\(.*?\)\)", re.DOTALL)


def extern_c_kernels(source):
    """Names of the `extern "C" __global__` functions in a .cu source, in source order.

    These are the entry points CuPy looks up by name (RawModule.get_function), so each must compile and appear
    in ptxas' report under exactly this name. Handles `extern "C" __global__ ...` and `extern "C" { ... }` blocks.
    """
    text = _ATTRIBUTES.sub(" ", _strip_comments(source))
    names = []
    for m in re.finditer(r'extern\s+"C"\s*(\{)?', text):
        if m[1]:  # a block: scan up to its matching brace
            depth, end = 1, m.end()
            while depth and end < len(text):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            body = text[m.end() : end]
        else:  # a single declaration: up to its parameter list
            body = text[m.end() : text.find("(", m.end()) + 1]
        names += re.findall(r"__global__[^;{}()]*?\b(\w+)\s*\(", body)
    return list(dict.fromkeys(names))  # a kernel declared and then defined counts once


_compiled = {}  # (file, arch, via, its text and its headers' text) -> (result, report): each compile runs once


def compile_with_report(path, arch, via="ctypes"):
    """Compile one .cu file for an sm_XX arch (headers from its own folder) with CuPy's options and ptxas -v, and
    return (result, parsed report). via: which binding reaches NVRTC (see nvrtc.compile)."""
    path = Path(path)
    source = path.read_text()
    headers = included_headers(source, [path.parent])
    key = (str(path), arch, via, source, tuple(h.read_text() for h in headers))
    if key not in _compiled:
        result = nvrtc.compile(source, name=path.name, arch=arch, include_dirs=[str(path.parent)], report=True, via=via)
        _compiled[key] = result, nvrtc.parse_ptxas_report(result.log)
    return _compiled[key]


def resource_table(archs=("sm_80", "sm_90"), files=None):
    """One row per (file, kernel, arch): the extern "C" kernels in source order, then any other entry functions."""
    rows = []
    for path in kernel_files() if files is None else files:
        declared = extern_c_kernels(Path(path).read_text())
        for arch in archs:
            _, report = compile_with_report(path, arch)
            missing = [k for k in declared if k not in report]
            if missing:
                raise RuntimeError(f"{Path(path).name} [{arch}]: no ptxas report for kernels {missing}")
            others = sorted(name for name, r in report.items() if r["entry"] and name not in declared)
            for kernel in declared + others:
                r = report[kernel]
                rows.append({"file": Path(path).name, "kernel": kernel, "arch": arch, **{c: r[c] for c in COLUMNS[3:]}})
    return rows


def format_markdown(rows):
    """The rows as a markdown table, one line per row, in the order of COLUMNS."""
    headers = ["file", "kernel", "arch", "registers", "shared (B)", "spill stores (B)", "spill loads (B)", "stack (B)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * 3 + "---:|" * 5]
    for row in rows:
        cells = [f"`{row['kernel']}`" if c == "kernel" else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(archs=("sm_80", "sm_90")):
    """Print the resource table of every shipped kernel (the CLI's `kernels report`)."""
    major, minor = nvrtc.version()
    print(f"Kernel resources as compiled by NVRTC {major}.{minor} with CuPy's options (from ptxas -v).\n")
    print(format_markdown(resource_table(archs)))


if __name__ == "__main__":
    main()
