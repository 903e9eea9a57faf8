"""Helpers that bundle configs call: where the bundle lives.

Every bundle config sets ``bundle_root`` with :func:`resolve_bundle_root`, and, as in MONAI model-zoo bundles, a
user overrides it on the command line (``--bundle_root /path/to/bundle``) or, for all runs of a shell, with
``$MEDAD_BUNDLE_ROOT``. Without an override the default must still be the folder of the config being run: users run
``python -m monai.bundle run training --config_file bundles/pdd/configs/train.json`` from the repository root (where
MONAI's own default, ``"."``, would be the repository), and a copied bundle run with its own ``--config_file`` must
write into the copy, never into the repository's ``models/``. MONAI's command line names that config file, so the
default is read from the arguments ``python -m monai.bundle`` was started with.
"""

from __future__ import annotations

import ast
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["command_line_config_files", "resolve_bundle_root"]

logger = logging.getLogger("medad_monai")

_MONAI_BUNDLE_MAIN = Path("monai") / "bundle" / "__main__.py"


def _as_paths(value: str) -> list[str]:
    """``--config_file`` as MONAI's command line (python-fire) accepts it: a path, a list literal, comma-separated."""
    text = value.strip()
    if text.startswith(("[", "(")):
        try:
            parsed = ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return []
        return [str(p) for p in parsed] if isinstance(parsed, (list, tuple)) else []
    # MONAI's load_config_files also takes "a.json,b.json"
    return [p for p in text.split(",") if p] if "," in text and not Path(text).is_file() else [text]


def command_line_config_files(argv: Sequence[str] | None = None) -> list[str]:
    """The config files given to ``python -m monai.bundle`` (``run``, ``verify_net_in_out``, ``ckpt_export``, ...).

    Empty when this process is not MONAI's bundle command line (a test, MONAI Label, the Deploy app: those set
    ``bundle_root`` themselves), so no other program's ``--config_file`` argument is read.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or not Path(argv[0]).as_posix().endswith(_MONAI_BUNDLE_MAIN.as_posix()):
        return []
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config_file="):
            return _as_paths(arg.split("=", 1)[1])
        if arg == "--config_file" and i + 1 < len(argv):
            return _as_paths(argv[i + 1])
    return []


def resolve_bundle_root(name: str) -> str:
    """Absolute folder of bundle ``name``: the default of every config's ``bundle_root``.

    In order: ``$MEDAD_BUNDLE_ROOT`` if set; the parent of the ``configs/`` folder holding the first ``--config_file``
    of ``python -m monai.bundle`` (from any working directory, a copied bundle included); ``bundles/<name>`` of the
    repository this package is installed from (editable install); ``bundles/<name>`` or ``.`` under the working
    directory. ``--bundle_root`` on the command line replaces the whole entry, as MONAI's overrides do.
    """
    env = os.environ.get("MEDAD_BUNDLE_ROOT")
    if env:
        return str(Path(env).resolve())
    files = command_line_config_files()
    if files:
        folder = Path(files[0]).resolve().parent
        return str(folder.parent if folder.name == "configs" else folder)
    candidates = [
        Path(__file__).resolve().parents[1] / "bundles" / name,
        Path.cwd() / "bundles" / name,
        Path.cwd(),
    ]
    for c in candidates:
        if (c / "configs").is_dir():
            return str(c)
    logger.warning(f"could not locate bundle {name!r}; using the working directory {Path.cwd()}")
    return str(Path.cwd())
