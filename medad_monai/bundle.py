"""Helpers that bundle configs call: where the bundle lives, and its standard folders.

MONAI's ``ConfigWorkflow`` knows the config folder but does not set ``bundle_root`` (``"."`` would be the working
directory), so a bundle run from the repository root, or from anywhere else, finds its own folder here.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

__all__ = ["resolve_bundle_root"]

logger = logging.getLogger("medad_monai")


def _running_config_root() -> Path | None:
    """The ``config_root_path`` of the ``ConfigWorkflow`` on the call stack, if one is parsing this config."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            # read the instance dict: workflows resolve unknown attributes as config properties
            root = vars(owner).get("config_root_path") if type(owner).__name__ == "ConfigWorkflow" else None
            if root is not None:
                return Path(root)
            frame = frame.f_back
    finally:
        del frame
    return None


def resolve_bundle_root(name: str) -> str:
    """Absolute folder of bundle ``name``.

    In order: ``$MEDAD_BUNDLE_ROOT`` if set; the parent of the ``configs/`` folder of the running
    ``ConfigWorkflow`` (``python -m monai.bundle run ... --config_file <bundle>/configs/train.json`` from any working
    directory); ``bundles/<name>`` of the repository this package is installed from (editable install);
    ``bundles/<name>`` or ``.`` under the working directory.
    """
    env = os.environ.get("MEDAD_BUNDLE_ROOT")
    if env:
        return str(Path(env).resolve())
    root = _running_config_root()
    if root is not None:
        root = root.resolve()
        return str(root.parent if root.name == "configs" else root)
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
