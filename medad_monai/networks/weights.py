"""Where a frozen teacher's pretrained weights come from: one rule for every teacher (WideResNet50-2, VMamba-Tiny).

A teacher's weights are given as one spec (the bundles' ``teacher_weights`` key):

* ``"random"`` (or ``None``): the architecture's random initialisation; the network is never touched;
* a path: that local file (an error naming it when it does not exist);
* ``"pretrained"`` (alias ``"imagenet"``: every teacher here was pretrained on ImageNet): the official file, looked
  for in this order: the file named by the teacher's environment variable (``$MEDAD_WRN50_2_WEIGHTS``,
  ``$MEDAD_VMAMBA_WEIGHTS``), the torch hub cache (``torch.hub.get_dir()/checkpoints/<official file name>``,
  ``$TORCH_HOME``), then a download of the official URL into that cache. When none works: an error that says where
  to put the file;
* ``"auto"``: the same search, download included, but when it fails the teacher falls back to random initialisation
  with a loud warning (results are then not comparable to the papers').

So ``auto`` may download when the official server answers (a probe of :data:`PROBE_TIMEOUT_S` seconds first, so a
firewalled machine fails fast instead of hanging); it downloads only the official file, into the torch hub cache,
logging where. For a machine that must not reach the network, use ``random`` or a path, or place the files first.
Nothing is ever faked: the fallback is the random initialisation and is recorded as such in the model
(``weights_description``).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.request
import warnings
from dataclasses import dataclass

import torch
from torchvision.models import Wide_ResNet50_2_Weights

from medad_monai.networks.vmamba import (
    VANILLA_VMAMBA_TINY_CHECKPOINT_NAME,
    VANILLA_VMAMBA_TINY_CHECKPOINT_URL,
    VMAMBA_TINY_CHECKPOINT_NAME,
    VMAMBA_TINY_CHECKPOINT_URL,
)

__all__ = [
    "PRETRAINED_SPECS",
    "PROBE_TIMEOUT_S",
    "VANILLA_VMAMBA_TINY",
    "VMAMBA_TINY",
    "WRN50_2_IMAGENET",
    "PretrainedFile",
    "WeightsUnavailableError",
    "cache_path",
    "loud_warning",
    "resolve_weights",
]

logger = logging.getLogger("medad_monai")

# A HEAD request with this timeout runs before a download, so that a firewalled machine (packets dropped, no DNS
# error) fails in seconds instead of hanging in urllib's untimed urlopen.
PROBE_TIMEOUT_S = 10.0
PRETRAINED_SPECS = ("pretrained", "imagenet")


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights asked for are neither on this machine nor downloadable."""


@dataclass(frozen=True)
class PretrainedFile:
    """An official pretrained checkpoint: what it is, its file name in the torch hub cache, where it is published and
    the environment variable that can name a local copy."""

    name: str
    filename: str
    url: str
    env: str


WRN50_2_IMAGENET = PretrainedFile(
    "WideResNet50-2 (torchvision IMAGENET1K_V1)",
    os.path.basename(Wide_ResNet50_2_Weights.IMAGENET1K_V1.url),  # wide_resnet50_2-95faca4d.pth
    Wide_ResNet50_2_Weights.IMAGENET1K_V1.url,
    "MEDAD_WRN50_2_WEIGHTS",
)
VANILLA_VMAMBA_TINY = PretrainedFile(
    "VMamba-Tiny v0 (ImageNet-1k)", VANILLA_VMAMBA_TINY_CHECKPOINT_NAME, VANILLA_VMAMBA_TINY_CHECKPOINT_URL,
    "MEDAD_VMAMBA_WEIGHTS",
)  # fmt: skip
VMAMBA_TINY = PretrainedFile(
    "VMamba-Tiny v2 vssm1_tiny_0230s (ImageNet-1k)", VMAMBA_TINY_CHECKPOINT_NAME, VMAMBA_TINY_CHECKPOINT_URL,
    "MEDAD_VMAMBA_WEIGHTS",
)  # fmt: skip


def cache_path(file: PretrainedFile) -> str:
    """Where torch hub keeps (and looks for) ``file``: ``torch.hub.get_dir()/checkpoints/<filename>``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", file.filename)


def loud_warning(message: str) -> None:
    """Log and ``warnings.warn`` a message framed so that it stands out in a training log."""
    banner = "!" * 100
    logger.warning("\n%s\n%s\n%s", banner, message, banner)
    warnings.warn(message, UserWarning, stacklevel=3)


def _download(file: PretrainedFile, dest: str) -> None:
    """Download ``file`` to ``dest`` (checked against the SHA-256 prefix its name carries, as torch hub does).
    Network errors propagate as ``OSError``."""
    urllib.request.urlopen(urllib.request.Request(file.url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    match = re.search(r"-([a-f0-9]{8,})\.", file.filename)
    logger.info("downloading %s from %s to %s", file.name, file.url, dest)
    torch.hub.download_url_to_file(file.url, dest, hash_prefix=match.group(1) if match else None, progress=True)


def _pretrained(file: PretrainedFile) -> tuple[str, str]:
    """The local path of ``file`` by the module's search order, downloading it if needed."""
    env = os.environ.get(file.env)
    if env:
        path = os.path.expanduser(env)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"${file.env} is set to '{env}', which is not a file")
        return path, f"{file.name} (local file {path}, ${file.env})"
    cached = cache_path(file)
    if os.path.isfile(cached):
        return cached, f"{file.name} ({cached})"
    try:
        _download(file, cached)
    except OSError as err:  # urllib.error.URLError/HTTPError and socket timeouts are OSErrors
        raise WeightsUnavailableError(
            f"{file.name} weights are not on this machine and could not be downloaded from {file.url} ({err}). "
            f"Place '{file.filename}' at '{cached}' (the torch hub cache, $TORCH_HOME), or set ${file.env} or the "
            "config's teacher_weights to its path, or 'random' for a randomly initialised teacher."
        ) from err
    return cached, f"{file.name} (downloaded to {cached})"


def resolve_weights(spec: str | os.PathLike[str] | None, file: PretrainedFile) -> tuple[str | None, str]:
    """Resolve a teacher's weights ``spec`` (see the module docstring) to a local file.

    Returns:
        ``(path or None for random initialisation, human-readable description)``.

    Raises:
        WeightsUnavailableError: ``"pretrained"``/``"imagenet"`` and the file is neither local nor downloadable.
        FileNotFoundError: a path (or ``$<env>``) that is not a file.
    """
    if spec is None or spec == "random":
        return None, "random initialisation"
    if spec in PRETRAINED_SPECS:
        return _pretrained(file)
    if spec == "auto":
        try:
            path, description = _pretrained(file)
        except WeightsUnavailableError as err:
            loud_warning(
                f"{file.name}: {str(err).split(' Place')[0]} FALLING BACK TO A RANDOMLY INITIALISED TEACHER: results "
                f"are NOT comparable to the paper's. Place '{file.filename}' at '{cache_path(file)}' (the torch hub "
                f"cache, $TORCH_HOME), or set ${file.env} or teacher_weights to its path."
            )
            return None, "random initialisation (teacher_weights='auto': pretrained weights unavailable)"
        return path, f"{description} (teacher_weights='auto')"
    path = os.path.expanduser(os.fspath(spec))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Teacher weights file not found: '{path}'. Expected 'auto', 'pretrained' ('imagenet'), 'random' or the "
            "path of a checkpoint file."
        )
    return path, f"local file {path}"
