"""The MONAI Label app against the real server: ``monailabel start_server`` on 127.0.0.1 with ``apps/medad``, every
bundle, and a studies folder of demo 2D images, a 3D NIfTI volume and an unreadable file.

Runs in the ``monailabel`` environment (README, "MONAI Label"): ``.venv-label/bin/python -m pytest -q tests/label``.
Tiny untrained networks (the bundles' own configs with fewer, slimmer members) keep it to a few minutes on 2 CPU
cores; what is checked is the serving contract, and one short training through the server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed: run in the MONAI Label environment (README)")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from PIL import Image  # noqa: E402

from medad_monai.data.demo import resolve_dataset_dir  # noqa: E402
from medad_monai.inference import load_bundle_model, score_volume  # noqa: E402
from medad_monai.inference.volume import body_slices  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S, REQUEST_TIMEOUT_S, TRAIN_TIMEOUT_S = 240, 300, 600

# config overrides written into the tmp copies of the bundles: small networks, short training
TINY = {
    "ddad": {
        "num_members": 2,
        "network_def#multiplier": 0.25,
        "batch_size": 2,
        "asr_batch_size": 2,
        "epochs": 2,
        "asr_epochs": 2,
    },
    "pdd": {"decoder_blocks": [1, 1, 1], "wrn_weights": "random", "vmamba_weights": "random"},
    "d24fad": {"teacher_weights": "random"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tiny_bundle(name: str, dest: Path) -> Path:
    """A copy of ``bundles/<name>`` whose configs carry the tiny overrides, with an untrained model saved."""
    root = dest / name
    shutil.copytree(REPO / "bundles" / name / "configs", root / "configs")
    (root / "models").mkdir(parents=True)
    for cfg in ("inference.json", "train.json"):
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / cfg))
        for k, v in TINY[name].items():
            if k in parser or k.split("#")[0] in parser:
                parser[k] = v
        ConfigParser.export_config_file(parser.config, str(root / "configs" / cfg), indent=2)
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    if name == "ddad":
        net.has_udm.fill_(True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    if name == "d24fad":  # store the support set (and its calibrated threshold) in the model, as training does
        model = load_bundle_model(root, device="cpu", setup=True, overrides={"support_dir": "demo:brain_mr/train/good"})
        torch.save(model.network.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Demo brain MR: 4 training normals, 3 test normals, 3 test anomalies, a 3D volume and an unreadable file."""
    demo = resolve_dataset_dir("demo:brain_mr")
    folder = tmp_path_factory.mktemp("studies")
    picks = {
        "normal": sorted((demo / "train" / "good").glob("*.png"))[:4],
        "good": sorted((demo / "test" / "good").glob("*.png"))[:3],
        "bad": sorted((demo / "test" / "bad").glob("*.png"))[:3],
    }
    for kind, files in picks.items():
        for i, f in enumerate(files):
            shutil.copy(f, folder / f"{kind}_{i}.png")
    slices = [np.asarray(Image.open(f), dtype=np.float32).T for f in picks["good"][:2] + picks["bad"][:1]]
    volume = np.stack(slices, axis=-1)  # (X, Y, Z), Z=3 slices, the last one anomalous
    affine = np.array([[0.9, 0, 0, -30.0], [0, 0.9, 0, 20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), str(folder / "volume.nii.gz"))
    (folder / "broken.png").write_bytes(b"this is not a PNG file")
    return folder


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("bundles")
    for name in TINY:
        _tiny_bundle(name, dest)
    return dest


@pytest.fixture(scope="module")
def ddad_threshold(bundles, studies) -> float:
    """Store a threshold between the tiny DDAD's scores of the demo studies, so both decisions occur."""
    model = load_bundle_model(bundles / "ddad", device="cpu")
    scores = [score_volume(model, p).score for p in sorted(studies.glob("*_*.png"))]
    threshold = float(np.median(scores))
    state = model.network.state_dict()
    state["threshold"] = torch.tensor(threshold)
    torch.save(state, bundles / "ddad" / "models" / "model.pt")
    return threshold


@pytest.fixture(scope="module")
def server(bundles, studies, ddad_threshold, tmp_path_factory):
    """``monailabel start_server`` with the app, on a free local port; stopped after the module."""
    app = tmp_path_factory.mktemp("app")  # the server creates model/, logs/... in the app folder: keep them out
    shutil.copy(REPO / "apps" / "medad" / "main.py", app / "main.py")
    port = _free_port()
    log = (tmp_path_factory.mktemp("log") / "server.log").open("w")
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "models", "all", "--conf", "bundles", str(bundles), "--conf", "strategy_model", "ddad",
        "--conf", "device", "cpu", "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up in {START_TIMEOUT_S} s:\n{Path(log.name).read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def _infer(url: str, model: str, image: str, **params) -> tuple[dict, bytes]:
    """POST /infer/<model>; returns the result JSON and the label file's bytes (multipart ``output=all``)."""
    r = requests.post(
        f"{url}/infer/{model}", params={"image": image, "output": "all"}, data={"params": json.dumps(params)},
        timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    from requests_toolbelt.multipart import decoder

    parts = {}
    for part in decoder.MultipartDecoder.from_response(r).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        parts["params" if 'name="params"' in disposition else "image"] = part.content
    return json.loads(parts["params"]), parts["image"]


def _read_label(content: bytes, suffix: str, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"label{suffix}"
    path.write_bytes(content)
    if suffix == ".png":
        return np.asarray(Image.open(path)).T  # LoadImage's (X, Y) order
    return np.asarray(nib.load(str(path)).dataobj)


def test_info_lists_every_bundle_as_a_segmentation_model_with_strategies_and_trainers(server):
    info = requests.get(f"{server}/info/", timeout=30).json()
    for name in TINY:
        assert info["models"][name]["type"] == "segmentation"  # what 3D Slicer lists
        assert info["models"][name]["labels"] == {"anomaly": 1}
        assert f"{name}_heatmap" in info["models"]
        assert name in info["trainers"]
    assert set(info["strategies"]) >= {"most_anomalous", "nearest_threshold"}


def test_infer_2d_returns_the_anomaly_label_score_threshold_and_decision(server, studies, ddad_threshold, tmp_path):
    result, content = _infer(server, "ddad", "bad_0")
    assert result["threshold"] == pytest.approx(ddad_threshold, rel=1e-6)
    assert result["decision"] == int(result["score"] > ddad_threshold)
    assert result["label"] == "anomaly" and result["label_names"] == {"anomaly": 1}
    mask = _read_label(content, ".png", tmp_path)
    image = np.asarray(Image.open(studies / "bad_0.png")).T
    assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
    # the served score and mask are the model's own (same bundle, same file)
    ours = score_volume(load_bundle_model(Path(result["model"]["bundle_root"]), device="cpu"), studies / "bad_0.png")
    assert result["score"] == pytest.approx(ours.score, abs=1e-6)
    assert np.array_equal(mask, ours.mask)


def test_infer_3d_volume_is_scored_slice_by_slice_in_the_input_geometry(server, studies, tmp_path):
    result, content = _infer(server, "ddad", "volume")
    vol = nib.load(str(studies / "volume.nii.gz"))
    mask_img_path = tmp_path / "mask.nii.gz"
    mask_img_path.write_bytes(content)
    mask = nib.load(str(mask_img_path))
    assert mask.shape == vol.shape
    assert np.allclose(mask.affine, vol.affine, atol=1e-4)  # spacing and orientation kept
    assert len(result["slice_scores"]) == vol.shape[2] and result["axis"] == 2
    scored = [v for v in result["slice_scores"] if v is not None]  # the levels of full sections (min_relative_body)
    assert result["score"] == pytest.approx(max(scored)) and result["min_relative_body"] == 0.9  # the max slice
    # options from the request: another axis and reduction
    other, _ = _infer(server, "ddad", "volume", axis=0, volume_reduction="mean")
    assert len(other["slice_scores"]) == vol.shape[0]
    # sagittal planes through the stack: those outside the head are not scored (null), the volume score is the
    # mean over the scored ones
    scored = other["scored_slices"]
    assert 0 < len(scored) < vol.shape[0] and other["slice_scores"][0] is None and 0 not in scored
    assert all((v is None) == (i not in scored) for i, v in enumerate(other["slice_scores"]))
    assert other["score"] == pytest.approx(float(np.mean([other["slice_scores"][i] for i in scored])))
    # a client asking for NRRD (a lossless volume container) gets the same label in NRRD
    import nrrd

    _, content = _infer(server, "ddad", "volume", result_extension=".nrrd")
    (tmp_path / "mask.nrrd").write_bytes(content)
    data, _ = nrrd.read(str(tmp_path / "mask.nrrd"))
    assert data.shape == vol.shape and np.array_equal(data, np.asarray(mask.dataobj))


def test_heatmap_task_returns_the_float_map_as_nifti(server, studies, tmp_path):
    result, content = _infer(server, "ddad_heatmap", "volume")
    path = tmp_path / "map.nii.gz"
    path.write_bytes(content)
    heat = nib.load(str(path))
    assert heat.get_data_dtype() == np.float32
    data = np.asarray(heat.dataobj)
    assert data.shape == nib.load(str(studies / "volume.nii.gz")).shape
    assert len(np.unique(data)) > 10  # a float map, not integer segments
    assert result["output"] == "heatmap"


def test_infer_an_uploaded_2d_dicom_file(server, tmp_path):
    """A file sent with the request (not in the datastore): a real 2D DICOM comes back as a NIfTI label."""
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    with src.open("rb") as f:
        r = requests.post(
            f"{server}/infer/ddad", params={"output": "image"}, files={"file": ("ct.dcm", f)},
            timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
    assert r.status_code == 200, r.text
    path = tmp_path / "label.nii.gz"
    path.write_bytes(r.content)
    mask = np.asarray(nib.load(str(path)).dataobj)
    assert mask.squeeze().shape == (128, 128) and set(np.unique(mask)) <= {0, 1}


def test_infer_a_dicom_series_folder(server, tmp_path):
    """A DICOM series given as a folder path on the server (as a DICOMweb datastore hands it over): a 3D label."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):  # CT_small.dcm at three table positions, 5 mm apart
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5.0 * k]
        ds.save_as(series / f"{k + 1}.dcm")
    result, content = _infer(server, "ddad", str(series))
    path = tmp_path / "label.nii.gz"
    path.write_bytes(content)
    label = nib.load(str(path))
    assert label.shape == (128, 128, 3) and len(result["slice_scores"]) == 3
    assert abs(label.affine[2, 2]) == pytest.approx(5.0, abs=1e-3)  # the series' slice spacing


@pytest.mark.parametrize("name", ["pdd", "d24fad"])
def test_every_bundle_serves_an_anomaly_label(server, studies, name, tmp_path):
    result, content = _infer(server, name, "bad_1")
    mask = _read_label(content, ".png", tmp_path)
    assert mask.shape == np.asarray(Image.open(studies / "bad_1.png")).T.shape
    assert np.isfinite(result["score"]) and result["decision"] in (-1, 0, 1)
    assert result["model"]["reduction"] == "max"


def test_unreadable_study_is_an_http_error_with_a_message_and_the_server_keeps_serving(server):
    r = requests.post(f"{server}/infer/ddad", params={"image": "broken", "output": "json"}, timeout=60)
    assert r.status_code == 422
    assert "broken.png" in r.json()["detail"] and "cannot read image" in r.json()["detail"]
    r = requests.post(f"{server}/infer/ddad", params={"image": "no_such_study", "output": "json"}, timeout=60)
    assert r.status_code == 404 and "no_such_study" in r.json()["detail"]
    assert requests.get(f"{server}/info/", timeout=30).status_code == 200
    result, _ = _infer(server, "ddad", "good_0")
    assert np.isfinite(result["score"])


def test_active_learning_serves_the_most_anomalous_and_the_least_certain_study(server, bundles, studies):
    r = requests.post(f"{server}/activelearning/most_anomalous", json={}, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code == 200, r.text
    picked = r.json()
    # the model's own scores of every unreviewed, readable study
    model = load_bundle_model(bundles / "ddad", device="cpu")
    candidates = [p for p in [*studies.glob("*.png"), *studies.glob("*.nii.gz")] if p.name != "broken.png"]
    scores = {p.name.split(".")[0]: score_volume(model, p).score for p in candidates}
    assert picked["id"] == max(scores, key=scores.get)
    assert picked["score"] == pytest.approx(scores[picked["id"]], abs=1e-6)
    assert picked["unscorable"] == ["broken"]

    r = requests.post(f"{server}/activelearning/nearest_threshold", json={}, timeout=REQUEST_TIMEOUT_S)
    nearest = r.json()
    t = float(model.threshold)
    assert nearest["id"] == min(scores, key=lambda k: abs(scores[k] - t))
    # scores are cached per study and model version
    cache = json.loads((studies / ".medad" / "ddad_scores.json").read_text())
    assert cache["model_version"] == model.model_version and len(cache["entries"]) == len(candidates)


def test_train_through_the_server_on_studies_marked_normal(server, bundles, studies, tmp_path):
    # two studies reviewed normal through image info, two by submitting an empty final label (cleared in Slicer)
    for image in ("normal_0", "normal_1"):
        r = requests.put(
            f"{server}/datastore/image/info", params={"image": image}, data={"info": json.dumps({"review": "normal"})},
            timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
    for image in ("normal_2", "normal_3"):
        shape = np.asarray(Image.open(studies / f"{image}.png")).shape
        empty = tmp_path / f"{image}.png"
        Image.fromarray(np.zeros(shape, dtype=np.uint8)).save(empty)
        with empty.open("rb") as f:
            r = requests.put(
                f"{server}/datastore/label", params={"image": image, "tag": "final"},
                files={"label": (empty.name, f, "image/png")}, timeout=30,
            )  # fmt: skip
        assert r.status_code == 200, r.text
    model_file = bundles / "ddad" / "models" / "model.pt"
    before = model_file.read_bytes()
    # as 3D Slicer does: start training in the background, then poll its status
    r = requests.post(f"{server}/train/ddad", json={"max_epochs": 1, "val_split": 0.25}, timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while True:
        status = requests.get(f"{server}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR") or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status.get("status") == "DONE", status
    after = torch.load(model_file, weights_only=True)
    assert model_file.read_bytes() != before
    assert bool(after["has_udm"])  # the unreviewed studies formed DDAD's unlabeled pool
    # the volume's slices that serving scores (at least 0.9 of its largest body section) joined it
    volume = np.asarray(nib.load(str(studies / "volume.nii.gz")).dataobj, dtype=np.float32)
    _, served = body_slices(torch.as_tensor(volume[None]), 2, None, 0.0, min_relative=0.9)
    assert 1 <= len(list((studies / ".medad" / "slices").glob("volume_*.nii.gz"))) == len(served) <= 3
    assert np.isfinite(float(after["threshold"]))  # recalibrated on the validation normal
    # the server serves the retrained model (new version) and the reviewed studies leave the candidates
    result, _ = _infer(server, "ddad", "bad_0")
    assert result["threshold"] == pytest.approx(float(after["threshold"]), rel=1e-6)
    picked = requests.post(f"{server}/activelearning/most_anomalous", json={}, timeout=REQUEST_TIMEOUT_S).json()
    assert not picked["id"].startswith("normal_")
    assert picked["model_version"] == result["model"]["model_version"]


def _train_status(server: str) -> dict:
    """Poll ``GET /train/`` (as 3D Slicer does) until the running training ends."""
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while True:
        status = requests.get(f"{server}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR") or time.monotonic() > deadline:
            return status
        time.sleep(2)


def test_a_refused_training_shows_the_client_its_reason_and_keeps_the_model(server, bundles):
    model_file = bundles / "pdd" / "models" / "model.pt"
    before = model_file.read_bytes()
    r = requests.post(f"{server}/train/pdd", json={"max_epochs": 0}, timeout=60)
    assert r.status_code == 200, r.text  # training runs in the background; its end is what the client polls
    status = _train_status(server)
    assert status.get("status") == "ERROR", status
    assert "training 'pdd': max_epochs must be a positive integer, got 0" in status["details"][-1], status["details"]
    assert model_file.read_bytes() == before
