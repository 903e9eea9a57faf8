"""Load an anomaly bundle for serving, without MONAI Label or MONAI Deploy.

A served bundle is the bundle's own ``network_def`` with its weights (``models/model.pt``, or the TorchScript
``models/model.ts`` that ``ckpt_export`` writes), the bundle's own per-image preprocessing (parsed from
``configs/inference.json`` with MONAI's ``ConfigParser``), the image-score reduction its network states
(:mod:`medad_monai.scores`), the network input size and channels from ``configs/metadata.json`` and the calibrated
threshold stored in the network's ``threshold`` buffer (docs/architecture.md, Contracts: everything inference
needs is in the network).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata
from monai.transforms import Compose, LoadImage, LoadImaged
from torch import nn

from medad_monai.networks.volume_threshold import VolumeCalibration, volume_calibration
from medad_monai.scores import SCORE_REDUCTIONS, image_score, score_reduction
from medad_monai.transforms import LoadAnomalyImaged

logger = logging.getLogger("medad_monai")

__all__ = ["TRUST_ENV", "BundleLoadError", "BundleModel", "file_version", "load_bundle_model", "model_version"]

# a TorchScript file's embedded inference.json runs as code when parsed: only with this set (or the argument)
TRUST_ENV = "MEDAD_TRUST_EMBEDDED_CONFIG"
_VERSION_CACHE: dict[tuple[str, int, int], str] = {}


class BundleLoadError(RuntimeError):
    """A bundle could not be loaded for serving; the message names the bundle path and the missing piece."""


def _hash_stream(h: Any, f: Any) -> None:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)


def file_version(path: str | os.PathLike) -> str:
    """Content version of a model file: the first 16 hex digits of a SHA-256, memoised by (path, mtime, size).

    ``torch.save`` and TorchScript files are zip archives whose top-level folder is named after the file they were
    first written to (for an atomic save, a random temporary name), so two bit-identical trainings give different
    bytes. For a zip archive the hash covers each member's path below that folder and its content, i.e. the weights
    and code, not the name; any other file is hashed byte for byte. A model copied with a new mtime keeps its
    version; a retrained model of the same size gets a new one.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _VERSION_CACHE:
        h = hashlib.sha256()
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as zf:
                members = sorted((info.filename.partition("/")[2], info) for info in zf.infolist() if not info.is_dir())
                for name, info in members:
                    h.update(name.encode() + b"\0")
                    with zf.open(info) as f:
                        _hash_stream(h, f)
        else:
            with open(p, "rb") as f:
                _hash_stream(h, f)
        _VERSION_CACHE[key] = h.hexdigest()[:16]
    return _VERSION_CACHE[key]


def model_version(bundle: str | os.PathLike) -> str:
    """Version of the weights a bundle folder (or a ``model.pt`` / ``model.ts`` file) would serve."""
    p = Path(bundle)
    if p.is_dir():
        p = _model_file(p, prefer="pt")
    return file_version(p)


def _model_file(root: Path, prefer: str = "pt") -> Path:
    order = ["model.pt", "model.ts"] if prefer == "pt" else ["model.ts", "model.pt"]
    for name in order:
        f = root / "models" / name
        if f.is_file():
            return f
    raise BundleLoadError(f"bundle '{root}': no models/model.pt or models/model.ts (train or export the bundle first)")


def _is_loader(t: Any) -> bool:
    return isinstance(t, (LoadImage, LoadImaged, LoadAnomalyImaged))


@dataclass
class BundleModel:
    """A bundle ready to serve 2D images (and, through :mod:`medad_monai.inference.volume`, 3D volumes).

    Attributes:
        root: the bundle folder (or the TorchScript file's folder).
        name: the bundle's metadata ``name`` (else the folder name); version: metadata ``version``.
        network: the network in eval mode on ``device``; maps ``(B, C, H, W)`` to ``(B, 1, H, W)``.
        preprocessing: the config's whole ``preprocessing`` (loader included) for a ``{"image": path}`` item.
        image_transforms: the same transforms without the loader: applied to ``{"image": (C, H, W) tensor}``,
            i.e. one loaded 2D image or one slice of a volume (channel policy, resize, intensity scaling).
        reduction: the image score of a map, ``"mean"`` (DDAD) or ``"max"`` (others), as the network states it.
        channels, spatial_size: the network input from metadata ``inputs.image``.
        model_file: the weights served; model_version: :func:`file_version` of it.
        inferer: the config's ``inferer`` (how the network runs: its ``amp`` switch); ``None``: ``network(x)``.
    """

    root: Path
    name: str
    version: str
    network: nn.Module
    preprocessing: Compose
    image_transforms: Compose
    reduction: str
    channels: int
    spatial_size: tuple[int, ...]
    device: torch.device
    model_file: Path
    model_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None

    @property
    def threshold(self) -> float:
        """The calibrated decision threshold on the image score (network buffer); NaN when not calibrated."""
        t = getattr(self.network, "threshold", None)
        return float(t) if t is not None else float("nan")

    @property
    def body_fraction(self) -> float:
        """The least body fraction of a slice this model is served on (its calibration normals' body extent, see
        :mod:`medad_monai.networks.body_extent`); NaN when not recorded."""
        b = getattr(self.network, "body_fraction", None)
        return float(b) if b is not None else float("nan")

    @property
    def volume_calibration(self) -> VolumeCalibration | None:
        """The threshold for 3D volumes and the scoring options it holds for (network buffer, see
        :mod:`medad_monai.networks.volume_threshold`); ``None`` when no normal volumes calibrated it."""
        return volume_calibration(self.network)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``(B, 1, H, W)`` (float32, CPU) of a preprocessed batch ``(B, C, H, W)``."""
        x = torch.as_tensor(images, dtype=torch.float32).to(self.device)
        # the config's inferer, as the bundle's own inference runs it (its ``amp`` switch); bare TorchScript: forward
        out = self.inferer(x, self.network) if self.inferer is not None else self.network(x)
        return out.float().cpu()

    def score(self, maps: torch.Tensor) -> torch.Tensor:
        """Image scores ``(B,)`` of network-resolution maps ``(B, 1, H, W)`` (:func:`~medad_monai.scores.image_score`
        with the network's reduction)."""
        return image_score(torch.as_tensor(maps).float(), self.reduction)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: name, version, model file and version, reduction, input, threshold (None if NaN), volume
        calibration (None if none)."""
        return {
            "name": self.name,
            "version": self.version,
            "bundle_root": str(self.root),
            "model_file": str(self.model_file),
            "model_version": self.model_version,
            "reduction": self.reduction,
            "channels": self.channels,
            "spatial_size": list(self.spatial_size),
            "threshold": self.threshold if math.isfinite(self.threshold) else None,  # JSON has no NaN
            "volume_calibration": asdict(vc) if (vc := self.volume_calibration) is not None else None,
        }


def _served_reduction(network: nn.Module, parser: ConfigParser, root: Path) -> str:
    """The image-score reduction ``network`` states (:func:`~medad_monai.scores.score_reduction`).

    A TorchScript file exported before networks stated theirs carries none; its embedded config then names it, as
    the ``reduction`` of its ``AnomalyScored`` postprocessing transform (the only place it was written then).
    """
    if getattr(network, "score_reduction", None) is not None:
        try:
            return score_reduction(network)
        except ValueError as e:
            raise BundleLoadError(f"bundle '{root}': {e}") from e
    post = parser.get("postprocessing")
    transforms = post.get("transforms", []) if isinstance(post, dict) else (post if isinstance(post, list) else [])
    prefix = "postprocessing#transforms" if isinstance(post, dict) else "postprocessing"
    for i, t in enumerate(transforms):
        if isinstance(t, dict) and str(t.get("_target_", "")).endswith("AnomalyScored") and "reduction" in t:
            value = parser.get_parsed_content(f"{prefix}#{i}#reduction")
            if value in SCORE_REDUCTIONS:
                return str(value)
    raise BundleLoadError(
        f"bundle '{root}': its network states no image-score reduction and its config names none; re-export it "
        "(python -m monai.bundle ckpt_export) with this version"
    )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BundleLoadError(f"cannot read checkpoint '{path}': {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # CheckpointSaver with several entries
    if not isinstance(state, dict):
        raise BundleLoadError(f"checkpoint '{path}' is not a state dict")
    return state


def _run_model_setup(parser: ConfigParser, root: Path) -> list[str]:
    """Run the config's ``model_setup`` entries (objects with ``apply()`` that set up the model state after the
    weights are loaded, e.g. D²4FAD's ``SupportSetLoader``: it stores the target's support set and calibrates the
    threshold), as the bundle's own evaluator does at its ``STARTED`` event. Returns their class names."""
    entries = parser.get("model_setup") or []
    if not isinstance(entries, list):
        raise BundleLoadError(f"bundle '{root}': model_setup must be a list of components with apply()")
    ran: list[str] = []
    for i, entry in enumerate(entries):
        ref = entry[1:] if isinstance(entry, str) and entry.startswith("@") else f"model_setup#{i}"
        try:
            component = parser.get_parsed_content(ref)
            component.apply()
        except Exception as e:
            raise BundleLoadError(f"bundle '{root}': model set-up {ref} failed: {type(e).__name__}: {e}") from e
        ran.append(type(component).__name__)
    return ran


@dataclass
class _BundleFiles:
    """What a bundle folder (or a TorchScript export) holds: its root, the TorchScript file (if one is served), the
    inference config and the metadata."""

    root: Path
    ts_file: Path | None
    config: dict[str, Any]
    metadata: dict[str, Any]


def _read_bundle(bundle: str | os.PathLike, trust_embedded_config: bool | None) -> _BundleFiles:
    """The inference config and metadata of a bundle folder, or of a TorchScript file (embedded, when trusted)."""
    path = Path(bundle).expanduser().resolve()
    if not path.exists():
        raise BundleLoadError(f"bundle '{path}' does not exist")
    ts_file: Path | None = None
    if path.is_file():
        ts_file, root = path, (path.parent.parent if path.parent.name == "models" else path.parent)
    else:
        root = path
    config_file, meta_file = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    if ts_file is None and not config_file.is_file():
        raise BundleLoadError(f"bundle '{root}': missing configs/inference.json")
    if ts_file is not None and not config_file.is_file():
        if trust_embedded_config is None:
            trust_embedded_config = os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        if not trust_embedded_config:
            raise BundleLoadError(
                f"TorchScript '{ts_file}' has no configs/ folder beside it, so it would be served with the "
                "inference.json embedded in it, whose '$' expressions and _target_ components run as Python code; "
                "serve its bundle folder instead, or, only for a file you trust, pass trust_embedded_config=True "
                f"(Deploy app: --trust-model-config; or set {TRUST_ENV}=1)"
            )
        try:
            _, meta, extra = load_net_with_metadata(str(ts_file), torch.device("cpu"), ("inference.json",))
        except Exception as e:
            raise BundleLoadError(f"cannot read TorchScript bundle '{ts_file}': {type(e).__name__}: {e}") from e
        if not extra.get("inference.json"):
            raise BundleLoadError(f"TorchScript '{ts_file}' embeds no inference.json and has no configs/ beside it")
        return _BundleFiles(root, ts_file, json.loads(extra["inference.json"]), meta)
    if not meta_file.is_file():
        raise BundleLoadError(f"bundle '{root}': missing configs/metadata.json")
    return _BundleFiles(root, ts_file, json.loads(config_file.read_text()), json.loads(meta_file.read_text()))


def _load_network(
    parser: ConfigParser, files: _BundleFiles, prefer: str, device: torch.device, setup: bool | str
) -> tuple[nn.Module, Path]:
    """The served network in eval mode and its weights file: TorchScript as exported, or ``network_def`` with
    ``model.pt`` and, when ``setup`` asks for it, the config's ``model_setup``."""
    root, ts_file = files.root, files.ts_file
    if ts_file is None and prefer == "ts" and (root / "models" / "model.ts").is_file():
        ts_file = root / "models" / "model.ts"
    model_file = ts_file if ts_file is not None else _model_file(root, prefer="pt")
    if model_file.suffix == ".ts":
        try:
            network = torch.jit.load(str(model_file), map_location=device)
        except Exception as e:
            raise BundleLoadError(f"cannot read TorchScript '{model_file}': {type(e).__name__}: {e}") from e
        return network.eval(), model_file
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as e:
        raise BundleLoadError(f"bundle '{root}': cannot build network_def: {type(e).__name__}: {e}") from e
    try:
        network.load_state_dict(_load_state(model_file))
    except BundleLoadError:
        raise
    except Exception as e:
        raise BundleLoadError(f"checkpoint '{model_file}' does not fit network_def: {e}") from e
    network = network.to(device)
    holds_state = bool(getattr(network, "has_support", False))
    if setup is True or (setup == "auto" and not holds_state):
        _run_model_setup(parser, root)
    return network.eval(), model_file


def load_bundle_model(
    bundle: str | os.PathLike,
    device: str | torch.device | None = None,
    prefer: str = "pt",
    overrides: dict[str, Any] | None = None,
    setup: bool | str = "auto",
    trust_embedded_config: bool | None = None,
) -> BundleModel:
    """Load a bundle for serving.

    Args:
        bundle: a bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt`` or
            ``models/model.ts``), or a TorchScript file exported by ``ckpt_export`` (its embedded ``metadata.json``
            and ``inference.json`` are used when the file has no ``configs/`` folder beside it).
        device: where the network runs; default the config's ``device`` policy (CUDA if available, else CPU).
        prefer: ``"pt"`` (eager ``network_def`` + ``model.pt``, default) or ``"ts"`` (TorchScript first).
        overrides: extra config overrides (``{"image_size": 64}``, D²4FAD's ``{"support_dir": ...}``), applied
            after ``bundle_root``.
        setup: run the config's ``model_setup`` entries (components with ``apply()``, e.g. D²4FAD's support set
            loader) after loading the weights, as the bundle's own inference does (eager bundles only; a TorchScript
            export carries the state it was exported with). ``"auto"`` (default): only when the weights do not
            already carry that state (D²4FAD's ``has_support`` buffer is false), so a trained model is served with
            the support set it was trained and calibrated with and serving needs no support images; ``True``:
            always (e.g. with a ``support_dir`` override for a new target); ``False``: never.
        trust_embedded_config: a TorchScript file without a ``configs/`` folder beside it is served with the
            ``inference.json`` embedded in it, and parsing a config runs its ``$`` expressions and ``_target_``
            components as Python code: a downloaded file could run anything. Such a file is refused unless this is
            ``True`` (``None``: the ``MEDAD_TRUST_EMBEDDED_CONFIG`` environment variable, ``1``/``true``), as MONAI
            warns for its own configs. Bundle folders (your own ``configs/``) are not affected.

    Raises:
        BundleLoadError: naming the bundle path, when a config, the metadata or the weights are missing or invalid.
    """
    if setup not in (True, False, "auto"):
        raise ValueError(f"setup must be True, False or 'auto', got {setup!r}")
    files = _read_bundle(bundle, trust_embedded_config)
    root, config, metadata = files.root, files.config, files.metadata
    dev = torch.device(device) if device is not None else None
    parser = ConfigParser(config)
    parser["bundle_root"] = str(root)
    if dev is not None:
        parser["device"] = f"$torch.device('{dev}')"
    for k, v in (overrides or {}).items():
        parser[k] = v
    try:
        dev = torch.device(parser.get_parsed_content("device")) if dev is None else dev
        preprocessing = parser.get_parsed_content("preprocessing")
    except Exception as e:
        raise BundleLoadError(f"bundle '{root}': cannot build preprocessing: {type(e).__name__}: {e}") from e
    if not isinstance(preprocessing, Compose):
        preprocessing = Compose(preprocessing)
    image_transforms = Compose([t for t in preprocessing.transforms if not _is_loader(t)])

    inp = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    channels = int(inp.get("num_channels", 1))
    spatial_size = tuple(int(s) for s in inp.get("spatial_shape", ()))

    network, model_file = _load_network(parser, files, prefer, dev, setup)
    try:
        inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    except Exception as e:
        raise BundleLoadError(f"bundle '{root}': cannot build the inferer: {type(e).__name__}: {e}") from e
    reduction = _served_reduction(network, parser, root)
    threshold = getattr(network, "threshold", None)
    if isinstance(threshold, torch.Tensor) and threshold.numel() == 1 and not torch.isfinite(threshold).item():
        logger.warning(
            f"bundle '{root}': model '{model_file}' has no calibrated threshold (NaN): scores and maps are served, "
            "every decision is -1 (undecided). Its training did not finish the calibration; retrain it."
        )
    return BundleModel(
        root=root,
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "")),
        network=network,
        preprocessing=preprocessing,
        image_transforms=image_transforms,
        reduction=reduction,
        channels=channels,
        spatial_size=spatial_size,
        device=dev,
        model_file=model_file,
        model_version=file_version(model_file),
        metadata=metadata,
        config=config,
        inferer=inferer,
    )
