"""Dataset wrappers for training schemes that need more than one image per item."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["EnsembleDataset", "PartnerDataset"]


class EnsembleDataset(Dataset):
    """Gives each of ``num_members`` ensemble members its own data order, so they train in one batched loop.

    Item ``i`` holds ``base[perm_k[i]]`` for member ``k`` (``perm_0`` the identity, the others fixed random
    permutations drawn from ``seed``), stacked along a new member axis: ``image`` becomes ``(K, C, H, W)``.
    Shuffled by the DataLoader, member ``k`` sees ``perm_k ∘ shuffle``: every image once per epoch, in an order and
    batch grouping of its own. With independent parameters and an element-wise optimiser (Adam), training the
    members on the summed loss of this joint batch equals training each alone (DDAD, MedIA 2023 §3.2: the members
    "differ only by initialisation and data order").

    Args:
        base: an indexable dataset of dicts (e.g. a MONAI ``CacheDataset``).
        num_members: K.
        keys: keys to stack along the member axis; other keys are taken from member 0.
        seed: seed of the permutations.
    """

    def __init__(
        self, base: Sequence[dict[str, Any]], num_members: int, keys: Sequence[str] = ("image",), seed: int = 0
    ):
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        if len(base) == 0:
            raise ValueError("EnsembleDataset: the base dataset is empty")
        self.base, self.num_members, self.keys = base, num_members, tuple(keys)
        rng = np.random.default_rng(seed)
        self.perms = [np.arange(len(base))] + [rng.permutation(len(base)) for _ in range(num_members - 1)]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        items = [self.base[int(p[index])] for p in self.perms]
        out = dict(items[0])
        for key in self.keys:
            out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
        return out


class PartnerDataset(Dataset):
    """Adds a random other item's image under ``partner_key`` and applies ``transform`` to the pair.

    DDAD's synthetic anomalies blend a patch of *another* normal training image (official ``SelfAnomalyDataset``);
    MONAI transforms see one item at a time, so this wrapper supplies the partner.

    Args:
        base: an indexable dataset of dicts with preprocessed images (e.g. a ``CacheDataset``).
        transform: callable applied to the item dict after the partner is attached.
        image_key, partner_key: where the image is read and where the partner's image is put.
        seed: seed of the partner choice (re-seeded per worker by index, so runs are repeatable).
        partners: where the partners come from when not from ``base`` (e.g. the training normals for synthetic
            anomalies on validation normals, so a single validation normal still gets a partner); every item of
            ``partners`` is a candidate. ``None``: another item of ``base``, which then needs at least 2 items.
    """

    def __init__(
        self,
        base: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        image_key: str = "image",
        partner_key: str = "source",
        seed: int = 0,
        partners: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        if partners is None and len(base) < 2:
            raise ValueError(f"PartnerDataset needs at least 2 images, got {len(base)}")
        if partners is not None and len(partners) < 1:
            raise ValueError("PartnerDataset got an empty partner dataset")
        self.base, self.transform, self.partners = base, transform, partners
        self.image_key, self.partner_key = image_key, partner_key
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        if self.partners is not None:
            partner = self.partners[int(self.rng.integers(len(self.partners)))]
        else:
            other = int(self.rng.integers(len(self.base) - 1))
            partner = self.base[other + int(other >= index)]  # uniform over the other items
        item[self.partner_key] = partner[self.image_key]
        return self.transform(item) if self.transform is not None else item
