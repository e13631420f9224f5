"""What a kernel file #includes: every header it pulls in, recursively, found as NVRTC and g++ find them.

The loader hashes these headers into the text it compiles (so that an edited header cannot leave a cached module
stale), the CPU emulator keys its own build cache on them, and the resource report lists them.

What this module deliberately is not: a preprocessor. It follows quoted includes only and evaluates no #if.
"""

import re
from pathlib import Path

# A quoted include at the start of a line. Angle-bracket includes are toolchain headers (NVRTC's, the C++
# library's): those change with the compiler, whose version the caches already key on.
_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.MULTILINE)


def included_headers(source, include_dirs):
    """Every file the `#include "..."` lines of `source` pull in, recursively, each once, in the order first met.

    Found as NVRTC and g++ find them: a header's own includes next to that header first, then along include_dirs
    (the top-level source, compiled from a temporary folder by both, only along include_dirs). An include found in
    none of them is skipped: the compiler will report it if it is missing, and it is not a file of ours to hash.
    """
    found, pending = [], [(source, None)]
    while pending:
        text, folder = pending.pop(0)
        for name in _QUOTED_INCLUDE.findall(text):
            for directory in ([folder] if folder else []) + [Path(d) for d in include_dirs]:
                path = (directory / name).resolve()
                if path.is_file():
                    if path not in found:
                        found.append(path)
                        pending.append((path.read_text(encoding="utf-8"), path.parent))
                    break
    return found
