"""Check a bundle's user-facing options before anything is trained.

A mistyped option (``--epochs abc``, ``--threshold_quantile 2``) would otherwise surface deep inside a run, as a
``TypeError`` from a comparison or only after every stage has trained. Each bundle's ``initialize`` calls
:func:`check_options` with the options it reads; the error names the option, the value given and what is expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["OptionError", "check_options", "RULES"]


class OptionError(ValueError):
    """An option a user set has a value the bundle cannot use."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _integer(value) and value > 0


def _non_negative_int(value: Any) -> bool:
    return _integer(value) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _open_unit(value: Any) -> bool:
    return _number(value) and 0.0 < value < 1.0


def _half_open_unit(value: Any) -> bool:
    return _number(value) and 0.0 <= value < 1.0


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def _non_negative_number(value: Any) -> bool:
    return _number(value) and value >= 0


# option name -> (check, what it expects). Options absent from a call are not checked.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (_positive_int, "a positive integer"),
    "asr_epochs": (_positive_int, "a positive integer"),
    "batch_size": (_positive_int, "a positive integer"),
    "asr_batch_size": (_positive_int, "a positive integer"),
    "num_members": (_positive_int, "a positive integer"),
    "image_size": (_positive_int, "a positive integer"),
    "num_support": (_positive_int, "a positive integer"),
    "num_calibration": (_non_negative_int, "a non-negative integer"),
    "num_workers": (_non_negative_int, "a non-negative integer"),
    "seed": (_integer, "an integer"),
    "epoch_length": (lambda v: v is None or _positive_int(v), "a positive integer or null (one pass over the data)"),
    "val_interval": (_positive_int, "a positive integer"),
    "threshold_quantile": (_open_unit, "a number strictly between 0 and 1"),
    "val_fraction": (_half_open_unit, "a number in [0, 1)"),
    "pool_holdout": (_half_open_unit, "a number in [0, 1)"),
    "learning_rate": (_positive_number, "a positive number"),
    "sigma": (_non_negative_number, "a non-negative number"),
}


def check_options(**options: Any) -> None:
    """Raise :class:`OptionError` naming every option whose value does not fit :data:`RULES`.

    Args:
        options: ``name=value`` as the bundle config holds them after the command-line overrides (MONAI parses
            ``--epochs 5`` as the integer 5 and ``--epochs abc`` as the string ``"abc"``).

    Raises:
        OptionError: listing each bad option with the value given and what is expected; ``KeyError`` for a name
            without a rule (a typo in the config, not in the user's input).
    """
    problems = []
    for name, value in options.items():
        if name not in RULES:
            raise KeyError(f"no rule for option {name!r}; known: {sorted(RULES)}")
        check, expected = RULES[name]
        if not check(value):
            problems.append(f"--{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if problems:
        raise OptionError("invalid option" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))
