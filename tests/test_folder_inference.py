"""Bundle inference over a folder scores what it can and reports the rest; one run's outputs never mix with an
earlier run's; an error's last line names the problem."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_testing import bundle_inference, run_inference
from PIL import Image
from test_volume_inference import TINY, make_ddad_bundle

from medad_monai.data.tolerant import FailureLog, TolerantDataset
from medad_monai.errors import actual_error
from medad_monai.handlers.run_outputs import InferenceRunError, PartialInferenceError, RunOutputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_ddad_bundle(tmp_path_factory.mktemp("ddad_folder"))


def _images(folder: Path, names: list[str], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 56), dtype=np.uint8)).save(folder / name)
    return folder


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "scores.csv").open()))


def _run(bundle: Path, inputs: Path, out: Path, **override) -> None:
    run_inference(bundle, inputs, out, **{**TINY, **override})


def test_tolerant_dataset_yields_what_it_can_and_records_the_rest(tmp_path):
    def transform(item):
        if item["image"] == "bad":
            raise RuntimeError("applying transform") from OSError("cannot read image 'bad': truncated")
        return {"image": item["image"].upper()}

    log = FailureLog(tmp_path / "f.jsonl")
    ds = TolerantDataset([{"image": "a"}, {"image": "bad"}, {"image": "c"}], transform, log)
    assert [d["image"] for d in ds] == ["A", "C"]
    assert log.entries() == [{"image": "bad", "error": "OSError: cannot read image 'bad': truncated"}]  # unwrapped
    log.clear()
    assert log.entries() == [] and len(log) == 0


def test_one_unreadable_file_is_a_row_with_its_reason_and_every_other_file_is_scored(bundle, tmp_path):
    inputs = _images(tmp_path / "in", ["a.png", "b.png", "d.png"])
    (inputs / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # sorts between the readable ones
    _run(bundle, inputs, tmp_path / "out")
    rows = {Path(r["filename"]).name: r for r in _rows(tmp_path / "out")}
    assert set(rows) == {"a.png", "b.png", "c.png", "d.png"}
    assert "c.png" in rows["c.png"]["filename"] and "cannot read image" in rows["c.png"]["error"]
    assert rows["c.png"]["score"] == "" and rows["c.png"]["pred_file"] == ""
    for name in ("a.png", "b.png", "d.png"):
        assert rows[name]["error"] == "" and np.isfinite(float(rows[name]["score"]))
        assert Path(rows[name]["pred_file"]).is_file() and Path(rows[name]["pred_file"]).parent == tmp_path / "out"
    summary = json.loads((tmp_path / "out" / ".medad_outputs.json").read_text())
    assert summary["scored"] == 3 and summary["failed"] == 1 and summary["failures"][0]["image"].endswith("c.png")
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind
    with pytest.raises(Exception) as err:  # strict: the same outputs are published, then the run fails
        _run(bundle, inputs, tmp_path / "strict", strict=True)
    assert isinstance(actual_error(err.value), PartialInferenceError) and "c.png" in str(actual_error(err.value))
    assert len(_rows(tmp_path / "strict")) == 4


def test_nothing_readable_fails_after_writing_the_report(bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "x.png").write_bytes(b"not a png")
    with pytest.raises(Exception) as err:
        _run(bundle, inputs, tmp_path / "out")
    cause = actual_error(err.value)
    assert isinstance(cause, InferenceRunError) and "no image could be scored" in str(cause) and "x.png" in str(cause)
    assert [r["filename"] for r in _rows(tmp_path / "out")] == [str(inputs / "x.png")]


def test_a_second_run_replaces_the_first_run_outputs_instead_of_mixing_with_them(bundle, tmp_path):
    out = tmp_path / "out"
    bundle_inference(bundle, _images(tmp_path / "first", ["a.png", "b.png"]), out, **TINY)
    rows = bundle_inference(bundle, _images(tmp_path / "second", ["c.png"], seed=1), out, **TINY)
    assert list(rows) == ["c"]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["c_anomaly_map.nii.gz"]  # a and b are gone


def test_a_foreign_output_folder_is_refused_before_anything_is_written(bundle, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(Exception) as err:
        _run(bundle, _images(tmp_path / "in", ["a.png"]), out)
    cause = actual_error(err.value)
    assert isinstance(cause, FileExistsError) and str(out) in str(cause) and "new or empty folder" in str(cause)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_a_killed_run_staging_folder_is_removed_by_the_next_run(bundle, tmp_path):
    out = tmp_path / "out"
    stale = RunOutputs(out).staging
    stale.mkdir(parents=True)
    (stale / "half_anomaly_map.nii.gz").write_bytes(b"half")
    rows = bundle_inference(bundle, _images(tmp_path / "in", ["a.png"]), out, **TINY)
    assert list(rows) == ["a"] and not stale.exists() and not (out / "half_anomaly_map.nii.gz").exists()


def test_the_last_line_of_a_failed_bundle_run_names_the_file_and_the_problem(bundle, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"not a png")
    overrides = [f"--{k} {v}" for k, v in TINY.items()]
    cmd = (
        f"{sys.executable} -m monai.bundle run --config_file {bundle / 'configs' / 'inference.json'} "
        f"--meta_file {bundle / 'configs' / 'metadata.json'} --bundle_root {bundle} --dataset_dir {inputs} "
        f"--output_dir {tmp_path / 'out'} --device \"\\$torch.device('cpu')\" " + " ".join(overrides)
    )
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: InferenceRunError: no image could be scored"), last
    assert "broken.png" in last and "cannot read image" in last


def test_strict_accepts_the_spellings_of_a_command_line_flag(tmp_path):
    assert RunOutputs(tmp_path / "o", strict="false").strict is False
    assert RunOutputs(tmp_path / "o", strict="True").strict is True
    with pytest.raises(ValueError, match="--strict must be true or false, got 'maybe'"):
        RunOutputs(tmp_path / "o", strict="maybe")


def _run_bundle(bundle: Path, workflow: str, configs: list[str], data: Path) -> subprocess.CompletedProcess:
    folder = bundle / "configs"
    config_files = ",".join(f"'{folder / c}'" for c in configs)
    overrides = " ".join(f"--{k} {v}" for k, v in TINY.items())
    cmd = (
        f'{sys.executable} -m monai.bundle run {workflow} --config_file "[{config_files}]" '
        f"--meta_file {folder / 'metadata.json'} --bundle_root {bundle} --dataset_dir {data} "
        f"--device \"\\$torch.device('cpu')\" --epochs 1 --asr_epochs 1 {overrides}"
    )
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("problem", ["corrupt image", "mask of another size"])
def test_a_bad_test_file_in_evaluation_exits_with_status_1_and_names_the_file(bundle, tmp_path, problem):
    # the error is raised inside CacheDataset's thread pool: without the summary hook's exit the interpreter's
    # finalisation aborted (status 134, "terminate called without an active exception") after the traceback
    data = tmp_path / "data"
    _images(data / "train" / "good", [f"n{i}.png" for i in range(4)])
    _images(data / "test" / "good", ["g0.png", "g1.png"], seed=1)
    _images(data / "test" / "bad", ["b0.png", "b1.png"], seed=2)
    if problem == "corrupt image":
        (data / "test" / "bad" / "b1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        expected = ("error: ImageReadError: cannot read image file", "b1.png")
    else:
        (data / "ground_truth" / "bad").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(data / "ground_truth" / "bad" / "b1_mask.png")
        expected = ("error: ImageReadError: mask", "b1_mask.png' has size (30, 20) but its image")
    proc = _run_bundle(bundle, "evaluating", ["train.json", "evaluate.json"], data)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(expected[0]) and expected[1] in last, last


def test_a_corrupt_unlabeled_training_image_exits_with_status_1_and_names_the_file(tmp_path):
    bundle = make_ddad_bundle(tmp_path / "bundle")
    data = tmp_path / "data"
    _images(data / "train" / "good", [f"n{i}.png" for i in range(8)])
    _images(data / "train" / "unlabeled", ["u0.png", "u1.png", "u2.png"], seed=3)
    (data / "train" / "unlabeled" / "u3.png").write_bytes(b"GIF89a broken")
    before = (bundle / "models" / "model.pt").read_bytes()
    proc = _run_bundle(bundle, "training", ["train.json"], data)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ImageReadError: cannot read image file") and "u3.png" in last, last
    assert (bundle / "models" / "model.pt").read_bytes() == before  # the working model is untouched
