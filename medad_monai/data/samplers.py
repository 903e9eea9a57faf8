"""A shuffling sampler that a resumed training can continue mid-pass.

Ignite runs ``epoch_length`` iterations per epoch; when that is shorter than the data (D²4FAD's default), one pass
over the data spans several epochs and an uninterrupted run keeps its data iterator across them. ``RandomSampler``
draws each pass's order from the global random state at the moment the pass starts, which a restarted process
cannot recreate. :class:`ResumableRandomSampler` makes pass ``p``'s order a function of ``(seed, p)`` alone, so
:class:`~medad_monai.handlers.resume.TrainingCheckpoint` can put it back at any iteration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableRandomSampler"]


class ResumableRandomSampler(Sampler[int]):
    """Random permutation per pass, seeded by ``(seed, pass)``; :meth:`resume_at` continues a pass part-way.

    Args:
        data_source: the dataset (only its length is used).
        seed: seed of the permutations; the same seed gives the same sequence of passes.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = int(seed)
        self.passes = 0  # passes started so far
        self._offset = 0  # indices of the next pass to skip (set by resume_at)

    def __len__(self) -> int:
        return len(self.data_source)

    def permutation(self, index: int) -> list[int]:
        """The order of pass ``index``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def resume_at(self, passes: int, offset: int) -> None:
        """Continue pass ``passes`` (0-based) from its ``offset``-th index: the state after ``passes`` whole passes
        and ``offset`` further indices."""
        if passes < 0 or not 0 <= offset <= len(self.data_source):
            raise ValueError(f"cannot resume at pass {passes}, offset {offset} of {len(self.data_source)} indices")
        self.passes, self._offset = int(passes), int(offset)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.passes)[self._offset :]
        self.passes, self._offset = self.passes + 1, 0
        return iter(order)
