"""Volumes are scored as a whole: one intensity window per volume, only the slices that show as much body as the
model's calibration normals, the label inside the body; the 3D demo volumes that exercise it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy import ndimage
from test_volume_inference import TINY, make_ddad_bundle

from medad_monai.data.demo_volumes import VOLUME_DOMAINS, demo_volume, write_demo_volumes
from medad_monai.data.foreground import body_extent, foreground, foreground_fraction
from medad_monai.handlers.threshold import ThresholdCalibrator
from medad_monai.inference import load_bundle_model
from medad_monai.inference.volume import body_slices, score_volume
from medad_monai.networks.d24fad import D24FAD
from medad_monai.networks.ddad import DDAD
from medad_monai.transforms import INTENSITY_WINDOW_KEY, IntensityPolicyd


def test_foreground_fills_holes_and_the_fraction_counts_pixels():
    img = np.zeros((10, 10), np.float32)
    img[2:7, 3:7] = 1.0  # a 5 x 4 body ...
    img[4, 5] = 0.0  # ... with a dark pixel inside (a lesion, a ventricle): still body
    assert foreground(img).sum() == 20
    assert foreground_fraction(torch.as_tensor(img)[None, None].repeat(2, 3, 1, 1)).tolist() == [0.2, 0.2]
    assert not foreground(np.ones((4, 4))).any()  # a constant image has no body to tell from background
    assert body_extent(np.array([0.5, 0.4, 0.6]), quantile=0.0, tolerance=0.8) == pytest.approx(0.32)


def test_a_slice_carries_its_volume_window_through_the_intensity_policy():
    from monai.data import MetaTensor

    policy = IntensityPolicyd("image", policy="auto")
    dark = MetaTensor(torch.full((1, 4, 4), 10.0), meta={INTENSITY_WINDOW_KEY: (0.0, 100.0, False)})
    dark[0, 0, 0] = 20.0
    out = policy({"image": dark})["image"]
    assert float(out.max()) == pytest.approx(0.2) and float(out.min()) == pytest.approx(0.1)  # not stretched to 1
    alone = policy({"image": MetaTensor(dark.as_tensor().clone())})["image"]
    assert float(alone.max()) == pytest.approx(1.0)  # a 2D image is still scaled on its own


def test_the_threshold_calibrator_records_the_normals_body_extent():
    net = DDAD(num_members=2, multiplier=0.25)
    images = torch.zeros(4, 1, 10, 10)
    for i, side in enumerate((4, 5, 6, 7)):  # bodies of 16, 25, 36 and 49 pixels
        images[i, :, :side, :side] = 1.0
    calibrator = ThresholdCalibrator(net, quantile=0.5)
    engine = Engine(lambda e, batch: [{"score": torch.tensor(s)} for s in (1.0, 2.0, 3.0, 4.0)])
    calibrator.attach(engine)
    engine.run([{"image": images}], max_epochs=1)
    assert float(net.threshold) == pytest.approx(2.5)
    expected = 0.8 * np.quantile([0.16, 0.25, 0.36, 0.49], 0.05)
    assert float(net.body_fraction) == pytest.approx(expected)


def test_checkpoints_from_before_the_body_extent_load_with_it_unknown():
    for net in (DDAD(num_members=2, multiplier=0.25), D24FAD(teacher_weights="random", num_support=2)):
        state = {k: v for k, v in net.state_dict().items() if k != "body_fraction"}
        fresh = type(net)(**({"num_members": 2, "multiplier": 0.25} if isinstance(net, DDAD) else
                             {"teacher_weights": "random", "num_support": 2}))  # fmt: skip
        fresh.body_fraction.fill_(0.3)
        fresh.load_state_dict(state)
        assert torch.isnan(fresh.body_fraction)


def _volume() -> np.ndarray:
    """Eight slices: 0 and 7 with a small body, 1-6 with a large one; slice 5 is slice 4 at half the intensity."""
    rng = np.random.default_rng(0)
    vol = rng.random((32, 32, 8)).astype(np.float32) * 0.01
    x, y = np.mgrid[0:32, 0:32]
    for z in range(8):
        r = 5 if z in (0, 7) else 13
        body = (x - 16) ** 2 + (y - 16) ** 2 < r**2
        vol[body, z] = 0.6 + 0.4 * rng.random(int(body.sum()))
    vol[:, :, 5] = vol[:, :, 4] * 0.5
    return vol


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    served = load_bundle_model(make_ddad_bundle(tmp_path_factory.mktemp("body")), device="cpu", overrides=TINY)
    served.network.set_served_map("rec")  # the reconstruction error follows the input even untrained
    return served


def test_slices_below_the_body_extent_get_no_score_no_map_and_no_label(model):
    vol = _volume()
    _, scored = body_slices(torch.as_tensor(vol)[None], 2, None, min_fraction=0.3)
    assert scored == [1, 2, 3, 4, 5, 6]  # the small bodies (fraction 0.07) are out, the large ones (0.51) in
    model.network.body_fraction.fill_(0.3)
    try:
        r = score_volume(model, vol, threshold=-1.0)
    finally:
        model.network.body_fraction.fill_(float("nan"))
    assert r.scored_slices == [1, 2, 3, 4, 5, 6]
    assert np.isnan(r.slice_scores[0]) and np.isnan(r.slice_scores[7])
    assert not r.map[:, :, [0, 7]].any() and not r.mask[:, :, [0, 7]].any()
    assert r.score == max(r.slice_scores[1:7]) and r.top_slice in range(1, 7)
    assert r.summary()["slice_scores"][0] is None  # strict JSON
    # the label covers the body of the scored slices (threshold -1: every pixel is above it), not the background
    body = foreground(vol[:, :, 3], (float(vol.min()), float(vol.max())))
    np.testing.assert_array_equal(r.mask[:, :, 3], body)
    # without a recorded extent: the slices with at least half the largest slice's body
    assert score_volume(model, vol).scored_slices == [1, 2, 3, 4, 5, 6]
    assert score_volume(model, vol, min_body_fraction=0.0, min_relative_body=0.0).scored_slices == list(range(8))


def test_the_relative_body_rule_follows_the_subject_and_is_validated(model):
    vol = _volume()  # slices 0 and 7 hold 15% of the largest slice's body, 1-6 all of it
    vol[:, :, 6] = np.where(_disc(11), vol[:, :, 6], vol.min())  # a section at 72% of the largest body
    assert score_volume(model, vol, min_body_fraction=0.0).scored_slices == [1, 2, 3, 4, 5]  # default 0.9
    r = score_volume(model, vol, min_body_fraction=0.0, min_relative_body=0.7)
    assert r.scored_slices == [1, 2, 3, 4, 5, 6] and r.summary()["min_relative_body"] == 0.7
    # the absolute extent still applies: a relative rule of 0 does not score bodies below it
    assert score_volume(model, vol, min_body_fraction=0.3, min_relative_body=0.0).scored_slices == [1, 2, 3, 4, 5, 6]
    for bad in (1.5, -0.1, "0.9", True):
        with pytest.raises(ValueError, match="min_relative_body must be a fraction in"):
            score_volume(model, vol, min_relative_body=bad)


def _disc(radius: int) -> np.ndarray:
    x, y = np.mgrid[0:32, 0:32]
    return (x - 16) ** 2 + (y - 16) ** 2 < radius**2


def test_a_volume_is_scaled_once_not_slice_by_slice(model):
    vol = _volume()
    r = score_volume(model, vol, min_body_fraction=0.0, min_relative_body=0.0)
    alone = [score_volume(model, vol[:, :, k]) for k in (4, 5)]
    # on its own, slice 5 (slice 4 at half the intensity) is stretched to slice 4's image: the same map
    np.testing.assert_allclose(alone[0].map, alone[1].map, atol=1e-5)
    # in its volume it stays darker than slice 4, and the model sees the difference
    assert np.abs(r.map[:, :, 4] - r.map[:, :, 5]).max() > 1e-3


@pytest.mark.parametrize("domain", sorted(VOLUME_DOMAINS))
def test_demo_volumes_are_one_subject_with_and_without_a_lesion(domain):
    normal, lesion = demo_volume(domain, False, seed=1), demo_volume(domain, True, seed=1)
    assert normal.image.shape == (128, 128, 32) and normal.image.dtype == VOLUME_DOMAINS[domain][2]
    assert not normal.mask.any() and 3 <= len(lesion.lesion_slices) <= 5
    assert set(np.flatnonzero(lesion.mask.any(axis=(0, 1)))) == set(lesion.lesion_slices)
    changed = np.flatnonzero((normal.image != lesion.image).any(axis=(0, 1)))
    assert set(changed) == set(lesion.lesion_slices)  # the same subject and noise everywhere else
    area = [foreground(normal.image[:, :, z].astype(np.float32)).mean() for z in (0, 16)]
    assert area[0] < 0.5 * area[1]  # the end slices hold little body, as the top of a head does
    assert demo_volume(domain, False, seed=2).image.tobytes() != normal.image.tobytes()  # subjects differ


def test_the_slices_of_a_demo_volume_share_one_acquisition():
    """One scanner run: neighbouring full sections of brain MR carry the same smooth bias field and noise level, so
    they differ by noise alone (an independent field per slice would change their low-pass ratio by ~20%)."""
    vol = demo_volume("brain_mr", False, seed=3).image.astype(np.float64)
    a, b = vol[:, :, 15], vol[:, :, 16]
    body = foreground(a.astype(np.float32)) & foreground(b.astype(np.float32))
    ratio = ndimage.gaussian_filter(a, 6)[body] / ndimage.gaussian_filter(b, 6)[body]
    assert ratio.std() < 0.02
    # the field still varies across the volume (it is a 3D field, not a constant)
    far = ndimage.gaussian_filter(vol[:, :, 6], 6)[body] / ndimage.gaussian_filter(vol[:, :, 25], 6)[body]
    assert far.std() > 2 * ratio.std()
    noise = [np.std((vol[:, :, z] - vol[:, :, z + 1])[body]) for z in (10, 14, 18)]
    assert max(noise) < 1.15 * min(noise)  # one noise level


def test_demo_volumes_are_written_as_nifti(tmp_path):
    import nibabel as nib

    paths = write_demo_volumes(tmp_path, ["head_ct"], seed=0)
    assert [p.name for p in paths] == ["head_ct_normal.nii.gz", "head_ct_lesion.nii.gz", "head_ct_lesion_mask.nii.gz"]
    img = nib.load(paths[1])
    assert img.shape == (128, 128, 32) and img.get_data_dtype() == np.int16 and img.header.get_zooms()[2] == 3.0
    np.testing.assert_array_equal(np.asarray(nib.load(paths[1]).dataobj), demo_volume("head_ct", True, 0).image)


def test_foreground_of_a_stack_fills_holes_in_each_slice_alone():
    """One call over a stack equals one call per slice: a ring's hole is filled, a hole open to the image border is
    not, and no hole is filled through a neighbouring slice."""
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.standard_normal((6, 40, 50)), 2)
    vol[:, 10:20, 10:20], vol[:, 13:17, 13:17] = 5.0, -5.0  # a closed ring in every slice
    vol[2, 0:25, 30:40], vol[2, 0:22, 33:37] = 5.0, -5.0  # a ring open to the top border in slice 2
    vol[3, 25:35, 30:40] = 5.0  # slice 3 closes, below slice 2's open ring, a region of its own
    window = (float(vol.min()), float(vol.max()))
    stack = foreground(vol, window, 0.6)
    assert np.array_equal(stack, np.stack([foreground(s, window, 0.6) for s in vol]))
    assert stack[:, 15, 15].all() and not stack[2, 5, 35]
