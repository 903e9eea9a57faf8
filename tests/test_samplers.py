"""ResumableRandomSampler: a restarted loader continues the interrupted pass exactly, and the seed sets the order."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from medad_monai.data.samplers import ResumableRandomSampler


def _batches(loader: DataLoader, count: int) -> list[list[int]]:
    """``count`` batches, re-iterating the loader when a pass ends (as Ignite does with a short epoch_length)."""
    out: list[list[int]] = []
    it = iter(loader)
    while len(out) < count:
        try:
            out.append(next(it).tolist())
        except StopIteration:
            it = iter(loader)
    return out


@pytest.mark.parametrize("drop_last", [True, False])
def test_a_restarted_loader_continues_the_interrupted_pass(drop_last):
    data = list(range(11))
    loader = DataLoader(data, batch_size=3, sampler=ResumableRandomSampler(data, seed=4), drop_last=drop_last)
    whole = _batches(loader, 20)
    for stop in (1, 3, 4, 9):  # mid-pass and at a pass boundary
        again = DataLoader(data, batch_size=3, sampler=ResumableRandomSampler(data, seed=4), drop_last=drop_last)
        again.sampler.resume_at(stop // len(again), (stop % len(again)) * 3)
        assert _batches(again, 20 - stop) == whole[stop:]


def test_each_pass_is_a_permutation_set_by_the_seed():
    data = list(range(50))
    a, b, c = (ResumableRandomSampler(data, seed=s) for s in (0, 0, 1))
    first, second = list(a), list(a)
    assert sorted(first) == data and sorted(second) == data and first != second  # a new order every pass
    assert list(b) == first and list(c) != first
    with pytest.raises(ValueError, match="offset 51 of 50"):
        a.resume_at(0, 51)
