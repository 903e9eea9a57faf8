"""The frozen-teacher feature cache: what it returns, when it computes, and that training losses stay the same."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medad_monai.handlers.teacher_cache import TeacherCache
from medad_monai.losses.d24fad import D24FADLoss
from medad_monai.losses.pdd import PDDLoss
from medad_monai.networks.d24fad import D24FAD
from medad_monai.networks.feature_cache import FeatureCache
from medad_monai.networks.pdd import PDD

SIZE = 64


class _Counting:
    """A 'teacher' that records how many images it computed: two levels of different shapes."""

    def __init__(self) -> None:
        self.computed = 0

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.computed += x.shape[0]
        return [x * 2.0 + 0.1234567, x.mean(dim=1, keepdim=True)[..., ::2, ::2]]


def test_cache_computes_each_image_once_and_keeps_the_batch_order():
    teacher, cache = _Counting(), FeatureCache(dtype=torch.float32)
    a, b = torch.rand(3, 2, 4, 4), torch.rand(2, 2, 4, 4)
    first = cache(a, teacher)
    assert teacher.computed == 3 and len(cache) == 3
    mixed = torch.cat([b[:1], a[2:], a[:1], b[1:]])  # new, cached, cached, new
    out = cache(mixed, teacher)
    assert teacher.computed == 5 and cache.hits == 2 and cache.misses == 5
    for got, want in zip(out, teacher(mixed)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # float32 storage is exact
    assert [f.shape for f in out] == [(4, 2, 4, 4), (4, 1, 2, 2)] and first[0].dtype == torch.float32
    cache(a + 1e-3, teacher)  # any change of the input is a miss: never another image's features
    assert cache.hits == 2 and len(cache) == 8


def test_float16_storage_rounds_and_the_budget_stops_storing():
    teacher = _Counting()
    x = torch.rand(4, 2, 4, 4)
    cache = FeatureCache(dtype=torch.float16)
    cache(x, teacher)
    again = cache(x, teacher)
    assert again[0].dtype == torch.float32  # returned as the teacher computed them
    torch.testing.assert_close(again[0], x * 2.0 + 0.1234567, rtol=1e-3, atol=1e-3)
    assert not torch.equal(again[0], x * 2.0 + 0.1234567)  # rounded, as stated
    per_image = (2 * 4 * 4 + 1 * 2 * 2) * 2  # bytes of one image's two levels in float16
    small = FeatureCache(dtype=torch.float16, max_bytes=2 * per_image)
    small(x, teacher)
    assert len(small) == 2 and small.nbytes == 2 * per_image
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(max_bytes=-1)


def test_pdd_training_loss_with_the_cache_equals_the_uncached_loss():
    torch.manual_seed(0)
    net = PDD(image_size=SIZE, wrn_weights="random", vmamba_weights="random", decoder_blocks=(1, 1, 1)).train()
    x = torch.rand(2, 3, SIZE, SIZE)
    criterion = PDDLoss()
    reference = criterion(net.training_outputs(x)).item()
    net.teacher_cache = FeatureCache(dtype=torch.float16)
    try:
        cold = criterion(net.training_outputs(x)).item()  # computed now: exact
        warm = criterion(net.training_outputs(x)).item()  # read back in float16
        assert net.teacher_cache.hits == 2
        loss = criterion(net.training_outputs(x))
        loss.backward()  # gradients still reach the trainable parts through cached targets
        assert net.target_adapters[0].body[0].weight.grad is not None
    finally:
        net.teacher_cache = None
    assert cold == pytest.approx(reference, rel=1e-6)
    assert warm == pytest.approx(reference, rel=1e-3)  # float16 rounding of the teacher features only
    assert torch.jit.script(net.eval()) is not None  # the attribute does not reach TorchScript


def test_d24fad_episode_loss_with_the_cache_equals_the_uncached_loss():
    torch.manual_seed(1)
    net = D24FAD(teacher_weights="random", image_size=SIZE, num_support=2).train()
    query, support = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 2, 3, SIZE, SIZE)
    criterion = D24FADLoss(tsd_weight=0.1)
    reference = criterion(net.episode_outputs(query, support)).item()
    net.teacher_cache = FeatureCache(dtype=torch.float32)
    try:
        criterion(net.episode_outputs(query, support))
        # support images come back as queries (and the reverse): the cache keys images, not roles
        swapped = criterion(net.episode_outputs(support[:, 0], torch.stack([query, support[:, 1]], dim=1))).item()
        assert net.teacher_cache.misses == 6 and net.teacher_cache.hits == 6  # nothing new in the second episode
        warm = criterion(net.episode_outputs(query, support)).item()
    finally:
        net.teacher_cache = None
    net.teacher_cache = None
    uncached = criterion(net.episode_outputs(support[:, 0], torch.stack([query, support[:, 1]], dim=1))).item()
    assert warm == pytest.approx(reference, rel=1e-5) and swapped == pytest.approx(uncached, rel=1e-5)


def test_handler_attaches_for_the_run_only_and_checks_its_network():
    net = PDD(image_size=SIZE, wrn_weights="random", vmamba_weights="random", decoder_blocks=(1, 1, 1))
    seen = []
    engine = Engine(lambda e, batch: seen.append(net.teacher_cache))
    TeacherCache(net, dtype="float32").attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert all(isinstance(c, FeatureCache) for c in seen) and len({id(c) for c in seen}) == 1
    assert net.teacher_cache is None  # gone after the run
    off = Engine(lambda e, batch: seen.append(net.teacher_cache))
    TeacherCache(net, enabled=False).attach(off)
    off.run([0], max_epochs=1)
    assert seen[-1] is None
    with pytest.raises(ValueError, match="no frozen teacher"):
        TeacherCache(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        TeacherCache(net, dtype="int8")
