"""A per-image cache of a frozen teacher's features, so that training epochs after the first skip the teacher.

PDD's two teachers and D²4FAD's WideResNet are frozen: without random augmentation, every epoch feeds them the same
preprocessed images and gets the same features back. :class:`FeatureCache` keys each image by a digest of its
preprocessed tensor (shape, dtype and bytes), not by its file name: whatever the file, the preprocessing or the support
slot it comes through, equal inputs share an entry and any change of the input (a random augmentation, a different
window) is a miss that is computed, so the cache can never return features of another input. Features are stored per
image in ``dtype`` (float32: exactly as computed; float16: half the memory, and the losses then differ from an uncached
run by the rounding of the teacher features, which ``tests/test_feature_cache.py`` bounds) on ``device`` (the CPU by
default, so a GPU run does not spend device memory on it), until ``max_bytes`` is reached; later images are computed
every time (no eviction: with shuffled epochs an evicting cache smaller than the data set would miss on almost every
image). The cache lives for one training run (:class:`~medad_monai.handlers.teacher_cache.TeacherCache`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FeatureCache"]


class FeatureCache:
    """Features of a frozen module, per input image, keyed by the image's content.

    Args:
        dtype: storage type of the features (returned in the type the module computed).
        device: where the features are stored.
        max_bytes: storage budget; images beyond it are not cached.
    """

    def __init__(
        self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", max_bytes: int = 4 * 2**30
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.dtype, self.device, self.max_bytes = dtype, torch.device(device), int(max_bytes)
        self._store: dict[bytes, list[Tensor]] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._out_dtypes: list[torch.dtype] | None = None  # what the module returns, per level

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def key(image: Tensor) -> bytes:
        """Digest of one preprocessed image (its shape, dtype and values)."""
        data = image.detach().contiguous().cpu()
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{tuple(data.shape)}|{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.digest()

    def __call__(self, images: Tensor, compute: Callable[[Tensor], list[Tensor]]) -> list[Tensor]:
        """The features ``compute(images)`` would return (a list of ``(B, ...)`` tensors), computing only the images
        not cached yet (in one batch) and storing them while the budget allows."""
        keys = [self.key(image) for image in images]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        per_image: list[list[Tensor] | None] = [self._store.get(k) for k in keys]
        if missing:
            fresh = compute(images[missing])
            self._out_dtypes = [f.dtype for f in fresh]
            for j, i in enumerate(missing):
                features = [f[j] for f in fresh]
                per_image[i] = features
                self._remember(keys[i], features)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        dtypes = self._out_dtypes or []
        return [
            torch.stack([p[level].to(device=images.device, dtype=dtype) for p in per_image])  # type: ignore[index]
            for level, dtype in enumerate(dtypes)
        ]

    def _remember(self, key: bytes, features: list[Tensor]) -> None:
        size = sum(f.numel() * torch.empty((), dtype=self.dtype).element_size() for f in features)
        if key in self._store or self.nbytes + size > self.max_bytes:
            return
        # a copy, so that the stored entry does not keep the whole batch's tensors alive
        self._store[key] = [f.detach().to(device=self.device, dtype=self.dtype, copy=True) for f in features]
        self.nbytes += size

    def clear(self) -> None:
        """Drop every entry (and the counters)."""
        self._store.clear()
        self.nbytes = self.hits = self.misses = 0
        self._out_dtypes = None
