"""How an image or a volume is scored: one options object, validated once here, which MONAI Label and the MONAI
Deploy app pass unchanged to :func:`~medad_monai.inference.volume.score_volume`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medad_monai.scores import VOLUME_REDUCTIONS

__all__ = ["MASK_SCOPES", "VOLUME_REDUCTIONS", "ScoringOptions"]

MASK_SCOPES = ("anomalous_slices", "all")


@dataclass(frozen=True)
class ScoringOptions:
    """The scoring options of :func:`~medad_monai.inference.volume.score_volume`.

    Attributes:
        axis: spatial axis (0, 1, 2; or -3..-1) sliced for 3D inputs (2: axial for RAS NIfTI).
        volume_reduction: the volume score from its slices' scores: ``max``, ``mean`` or ``topk``.
        top_k: slices averaged by ``topk``.
        batch_size: slices per network call.
        mask_scope: ``anomalous_slices`` (the label only in slices whose score exceeds the threshold) or ``all``.
        min_relative_body: a 3D volume's slices are scored only when their body is at least this fraction of the
            volume's largest slice's (besides the model's absolute body extent): the levels of full sections, which
            2D training slices show; ``0`` scores every level inside the body (for models trained on all levels).

    Raises:
        ValueError: naming the option and the values it takes.
    """

    axis: int = 2
    volume_reduction: str = "max"
    top_k: int = 3
    batch_size: int = 16
    mask_scope: str = "anomalous_slices"
    min_relative_body: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or self.axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"axis must be 0, 1 or 2 for a 3D volume, got {self.axis!r}")
        if self.volume_reduction not in VOLUME_REDUCTIONS:
            raise ValueError(f"volume_reduction must be one of {VOLUME_REDUCTIONS}, got {self.volume_reduction!r}")
        if self.mask_scope not in MASK_SCOPES:
            raise ValueError(f"mask_scope must be one of {MASK_SCOPES}, got {self.mask_scope!r}")
        fraction = self.min_relative_body
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"min_relative_body must be a fraction in [0, 1], got {self.min_relative_body!r}")
        for name in ("top_k", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def as_kwargs(self) -> dict[str, Any]:
        """The options as :func:`~medad_monai.inference.volume.score_volume` keyword arguments."""
        return asdict(self)
