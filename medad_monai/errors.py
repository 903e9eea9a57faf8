"""The last line a user sees names the problem.

``python -m monai.bundle run`` evaluates each config item inside ``try/except`` and re-raises as ``RuntimeError:
Failed to evaluate ConfigExpression: "$@evaluator.run()"`` (or ``Failed to instantiate component ...``); MONAI's
transforms wrap again (``applying transform ...``). The message that names the file or option and its problem is
then 40-100 lines above the end of the traceback. :func:`install_error_summary` (an ``initialize`` item of every
bundle config) keeps the full traceback and repeats the actual error as the final line.

It then ends the process with status 1 without the interpreter's finalisation: an error raised inside MONAI's
``CacheDataset`` thread pool leaves a daemon worker thread behind, and finalisation force-unwinds it through
torch's C++ (OpenMP) frames, which aborts with ``terminate called without an active exception`` (status 134)
after the traceback. Logging is shut down and the standard streams are flushed first.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["actual_error", "describe_error", "install_error_summary", "is_wrapper"]

# exceptions raised by MONAI's config and transform machinery only to add context to the real one
_WRAPPER_PREFIXES = ("Failed to evaluate", "Failed to instantiate", "applying transform", "Failed to run")


def is_wrapper(error: BaseException) -> bool:
    """Whether ``error`` only adds context (MONAI's ``Failed to evaluate ...``, ``applying transform ...``)."""
    return isinstance(error, RuntimeError) and str(error).lstrip().startswith(_WRAPPER_PREFIXES)


def actual_error(error: BaseException) -> BaseException:
    """The first exception along ``__cause__`` (``raise ... from e``) that is not a context wrapper: our own
    messages (which name the file and the problem) are kept, MONAI's wrappers around them skipped."""
    seen = {id(error)}
    while is_wrapper(error) and error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of :func:`actual_error`, on one line."""
    actual = actual_error(error)
    return f"{type(actual).__name__}: {' '.join(str(actual).split())}"


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


def _summarising_hook(previous: ExceptHook) -> ExceptHook:
    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        previous(kind, error, tb)
        if actual_error(error) is not error:
            print(f"error: {describe_error(error)}", file=sys.stderr, flush=True)
        if isinstance(error, Exception):  # not KeyboardInterrupt: that keeps Python's own handling
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(1)

    hook.medad_summary = True  # type: ignore[attr-defined]
    return hook


def install_error_summary() -> None:
    """Install (once) an ``excepthook`` that ends a wrapped error's traceback with the actual error."""
    if not getattr(sys.excepthook, "medad_summary", False):
        sys.excepthook = _summarising_hook(sys.excepthook)
