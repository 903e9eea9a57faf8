"""numba, when it loads, and the decorator the compiled CPU kernels are built with.

numba is a dependency, but the PyTorch paths must keep working where it cannot load (a numpy it does not support):
:data:`HAS_NUMBA` says whether it did, and modules with kernels define them only then.

:func:`jit` is ``numba.njit`` with numba's on-disk cache, so that a process loads the machine code instead of
compiling it on its first call (about 3 s for the selective scan, more than it saves on a few 64 px images). Where
numba finds no writable place for the cache (next to the source, or its user-wide cache directory), the kernel is
compiled in every process instead: a read-only install still works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HAS_NUMBA", "jit", "numba"]

try:
    import numba
except Exception:  # ImportError, or numba failing to load against this numpy
    numba = None

HAS_NUMBA: bool = numba is not None


def jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache where numba cannot keep one."""

    def wrap(fn: Callable[..., Any]) -> Any:
        if numba is None:
            raise RuntimeError("numba is not installed (pip install numba)")
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return wrap
