"""Transforms: loading errors, channel policy, mask checks, synthetic anomalies, scores and decisions."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from medad_monai.transforms import (
    AnomalyScored,
    ChannelPolicyd,
    CheckMaskSized,
    ImageReadError,
    IntensityPolicyd,
    LoadAnomalyImaged,
    RandPatchBlendAnomalyd,
    ThresholdDecisiond,
    storage_range,
)


def test_corrupt_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        LoadAnomalyImaged("image")({"image": str(bad)})


def test_3d_volume_in_2d_pipeline_is_an_error(tmp_path):
    import nibabel as nib

    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageReadError, match="vol.nii.gz.*not a 2D image"):
        LoadAnomalyImaged("image")({"image": str(path)})
    single = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 1), np.float32), np.eye(4)), str(single))
    assert LoadAnomalyImaged("image")({"image": str(single)})["image"].shape == (1, 8, 6)


def test_loads_rgb_16bit_png_dicom(tmp_path):
    from pydicom.data import get_testdata_file

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((10, 12, 3), 100, np.uint8)).save(rgb)
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((10, 12), 40000, np.uint16)).save(g16)
    loader = LoadAnomalyImaged("image")
    assert loader({"image": str(rgb)})["image"].shape == (3, 12, 10)
    assert float(loader({"image": str(g16)})["image"].max()) == 40000.0
    ct = loader({"image": get_testdata_file("CT_small.dcm")})["image"]
    assert ct.shape == (1, 128, 128)


def test_images_of_mixed_formats_collate_into_one_batch(tmp_path):
    # reviewed normals in a datastore may be PNG, DICOM and NIfTI: their readers' metadata differ (keys, and a
    # one-slice DICOM's 3D spatial shape), which failed the batch under pydicom 2.4 (the MONAI Label environment)
    import shutil

    import nibabel as nib
    from monai.data import list_data_collate
    from monai.transforms import Compose, Resized
    from pydicom.data import get_testdata_file

    Image.fromarray(np.full((40, 50), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((40, 50, 3), 9, np.uint8)).save(tmp_path / "b.png")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "c.dcm")
    nib.save(nib.Nifti1Image(np.ones((30, 20), np.float32), np.diag([0.5, 0.5, 1, 1])), str(tmp_path / "d.nii.gz"))
    pipeline = Compose([LoadAnomalyImaged("image"), ChannelPolicyd("image", 1), Resized("image", (16, 16))])
    items = [pipeline({"image": str(tmp_path / n)}) for n in ("a.png", "c.dcm", "b.png", "d.nii.gz")]
    batch = list_data_collate(items)
    assert batch["image"].shape == (4, 1, 16, 16)
    assert [str(p).rsplit("/", 1)[-1] for p in batch["image"].meta["filename_or_obj"]] == [
        "a.png", "c.dcm", "b.png", "d.nii.gz"
    ]  # fmt: skip
    assert items[1]["image"].meta["spatial_shape"].tolist() == [64, 64]  # the squeezed DICOM slice, before resizing
    loaded = LoadAnomalyImaged("image")({"image": str(tmp_path / "d.nii.gz")})["image"]
    assert float(loaded.affine[0, 0]) == 0.5 and loaded.meta["original_affine"][0, 0] == 0.5  # the geometry is kept


def test_channel_policy():
    rgb = MetaTensor(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1).expand(3, 2, 2).clone())
    gray = ChannelPolicyd("image", channels=1)({"image": rgb})["image"]
    assert gray.shape == (1, 2, 2)
    assert gray[0, 0, 0].item() == pytest.approx(0.299 * 1 + 0.587 * 2 + 0.114 * 3)
    three = ChannelPolicyd("image", channels=3)({"image": MetaTensor(torch.ones(1, 2, 2))})["image"]
    assert three.shape == (3, 2, 2)
    rgba = ChannelPolicyd("image", channels=3)({"image": MetaTensor(torch.ones(4, 2, 2))})["image"]
    assert rgba.shape == (3, 2, 2)
    with pytest.raises(ImageReadError, match="2 channels"):
        ChannelPolicyd("image", channels=1)({"image": MetaTensor(torch.ones(2, 2, 2))})


def test_mask_size_mismatch_names_both_files():
    img = MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": "scan_07.png"})
    mask = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": "scan_07_mask.png"})
    with pytest.raises(ImageReadError, match=r"scan_07_mask.png.*\(4, 4\).*scan_07.png.*\(8, 8\)"):
        CheckMaskSized()({"image": img, "mask": mask})
    filled = CheckMaskSized()({"image": img})
    assert filled["mask"].shape == (1, 8, 8) and filled["mask"].sum() == 0


def test_synthetic_patch_anomaly_mask_and_blend():
    t = RandPatchBlendAnomalyd(prob=1.0)
    t.set_random_state(seed=3)
    img = torch.zeros(1, 64, 64)
    src = torch.ones(1, 64, 64)
    out = t({"image": img.clone(), "source": src})
    mask = out["mask"][0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    # the mask is one filled axis-aligned rectangle
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    assert mask[y0:y1, x0:x1].all() and mask.sum().item() == (y1 - y0) * (x1 - x0)
    # half-width in [round(0.05 W), round(0.2 W)) = [3, 13) before clipping at the border
    assert (y1 - y0) <= 2 * 12 and (x1 - x0) <= 2 * 12
    # inside: (1 - a) * 0 + a * 1 = a, one alpha for the whole patch; outside: unchanged
    inside = out["image"][0][mask > 0]
    assert torch.allclose(inside, inside[0].expand_as(inside)) and 0 < inside[0].item() < 1
    assert (out["image"][0][mask == 0] == 0).all()
    assert out["label"] == 1 and "source" not in out


def test_synthetic_patch_anomaly_centre_in_core_region():
    t = RandPatchBlendAnomalyd(prob=1.0)
    t.set_random_state(seed=0)
    for _ in range(50):
        y0, y1, x0, x1, alpha = t.sample_box(100, 100)
        assert 0 <= alpha <= 1
        # an unclipped box is centred in [10, 90) (central 80 %)
        if y0 > 0 and y1 < 100:
            assert 10 <= (y0 + y1) / 2 < 90


def test_no_anomaly_with_probability_zero():
    t = RandPatchBlendAnomalyd(prob=0.0)
    img = torch.rand(1, 16, 16)
    out = t({"image": img.clone(), "source": torch.rand(1, 16, 16)})
    assert torch.equal(out["image"], img) and out["mask"].sum() == 0 and out["label"] == 0


def test_score_and_decision():
    d = {"pred": torch.tensor([[[0.1, 0.5], [0.2, 0.4]]])}

    class Net(torch.nn.Module):
        def __init__(self, reduction: str = "max"):
            super().__init__()
            self.score_reduction = reduction
            self.register_buffer("threshold", torch.tensor(0.25))

    assert AnomalyScored(network=Net("max"))(d)["score"].item() == pytest.approx(0.5)
    assert AnomalyScored(network=Net("mean"))(d)["score"].item() == pytest.approx(0.3)

    net = Net()
    out = ThresholdDecisiond(net)({"score": torch.tensor(0.3)})
    assert out["decision"] == 1 and out["threshold"] == pytest.approx(0.25)
    net.threshold.fill_(0.4)  # read at call time, e.g. after a checkpoint is loaded
    assert ThresholdDecisiond(net)({"score": torch.tensor(0.3)})["decision"] == 0
    net.threshold.fill_(float("nan"))
    assert ThresholdDecisiond(net)({"score": torch.tensor(0.3)})["decision"] == -1


def test_synthetic_patch_from_a_random_source_location():
    t = RandPatchBlendAnomalyd(prob=1.0, source_location="random")
    t.set_random_state(seed=5)
    source = torch.arange(64 * 64, dtype=torch.float32).view(1, 64, 64)
    out = t({"image": torch.zeros(1, 64, 64), "source": source})
    ys, xs = torch.nonzero(out["mask"][0], as_tuple=True)
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    patch = out["image"][0, y0:y1, x0:x1]
    alpha = (patch[0, 1] - patch[0, 0]).item()  # the source increases by 1 along x
    window = patch / alpha
    sy, sx = divmod(int(round(window[0, 0].item())), 64)
    # the patch is one contiguous window of the source, blended with one alpha
    assert torch.allclose(window, source[0, sy : sy + y1 - y0, sx : sx + x1 - x0], atol=1e-2)
    with pytest.raises(ValueError, match="source_location"):
        RandPatchBlendAnomalyd(source_location="elsewhere")


def test_intensity_policy_auto_uses_the_stored_range_of_8_and_16_bit_files(tmp_path):
    Image.fromarray(np.array([[51, 102], [0, 204]], np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(np.array([[0, 13107], [65535, 6553]], np.uint16)).save(tmp_path / "sixteen.png")
    load = LoadAnomalyImaged("image")
    scale = IntensityPolicyd("image", minv=0.0, maxv=1.0)
    eight = scale(load({"image": str(tmp_path / "eight.png")}))["image"]
    # fixed [0, 255]: a bright pixel does not rescale the others (per-image min-max would map 204 to 1)
    assert torch.allclose(eight.flatten().sort().values, torch.tensor([0.0, 0.2, 0.4, 0.8]), atol=1e-6)
    sixteen = scale(load({"image": str(tmp_path / "sixteen.png")}))["image"]
    assert torch.allclose(sixteen.flatten().sort().values, torch.tensor([0.0, 0.1, 0.2, 1.0]), atol=1e-4)
    signed = IntensityPolicyd("image", minv=-1.0, maxv=1.0)(load({"image": str(tmp_path / "eight.png")}))["image"]
    assert float(signed.max()) == pytest.approx(0.6) and float(signed.min()) == pytest.approx(-1.0)
    minmax = IntensityPolicyd("image", policy="minmax")(load({"image": str(tmp_path / "eight.png")}))["image"]
    assert float(minmax.max()) == pytest.approx(1.0)


def test_intensity_policy_dicom_window_float_minmax_and_percentile(tmp_path):
    import nibabel as nib
    from pydicom.data import get_testdata_file

    assert storage_range(get_testdata_file("MR_small.dcm")) == (-200.0, 1400.0)  # window 600 / 1600
    assert storage_range(get_testdata_file("CT_small.dcm")) is None  # no window: per-image scaling
    mr = IntensityPolicyd("image")(LoadAnomalyImaged("image")({"image": get_testdata_file("MR_small.dcm")}))["image"]
    assert float(mr.max()) == 1.0 and float(mr.min()) > 0.0  # values above 1400 saturate, min 127 stays above 0
    path = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.linspace(-3, 5, 100, dtype=np.float32).reshape(10, 10), np.eye(4)), str(path))
    item = LoadAnomalyImaged("image")({"image": str(path)})
    auto = IntensityPolicyd("image")(item)["image"]
    assert float(auto.min()) == 0.0 and float(auto.max()) == pytest.approx(1.0)
    pct = IntensityPolicyd("image", policy="percentile", lower=10, upper=90)(item)["image"]
    assert float((pct == 0).float().mean()) == pytest.approx(0.1, abs=0.02)
    fixed = IntensityPolicyd("image", policy="fixed", fixed_range=(0, 2))(item)["image"]
    assert float(fixed.min()) == 0.0 and float(fixed.max()) == 1.0
    assert torch.equal(IntensityPolicyd("image")({"image": torch.ones(1, 4, 4)})["image"], torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="needs fixed_range"):
        IntensityPolicyd("image", policy="fixed")
    with pytest.raises(ValueError, match="intensity policy must be one of"):
        IntensityPolicyd("image", policy="zscore")
