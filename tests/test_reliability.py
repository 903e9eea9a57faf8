"""Nothing lost, nothing half-written: options are checked before training, a training that fails half-way never
replaces a working ``model.pt``, and temporary files of a killed save are cleaned up by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_testing import bundle_workflow
from ignite.engine import Engine, Events
from PIL import Image
from torch import nn

from medad_monai.engines.ddad import DDADTraining
from medad_monai.errors import actual_error
from medad_monai.handlers.checkpoint import AtomicModelSaver
from medad_monai.io import remove_stale_temporaries
from medad_monai.options import OptionError, check_options

REPO = Path(__file__).resolve().parents[1]


def _configs(bundle: str) -> tuple[str, str]:
    configs = REPO / "bundles" / bundle / "configs"
    return str(configs / "train.json"), str(configs / "metadata.json")


def test_check_options_names_each_bad_option_with_its_value():
    check_options(epochs=3, epoch_length=None, threshold_quantile=0.95, val_fraction=0.0, seed=-1)
    with pytest.raises(OptionError, match=r"--epochs must be a positive integer, got 'abc' \(str\)"):
        check_options(epochs="abc")
    with pytest.raises(OptionError) as err:
        check_options(threshold_quantile=2, val_fraction=1.0, batch_size=0, epoch_length=2.5)
    message = str(err.value)
    for expected in ("--threshold_quantile", "got 2 ", "--val_fraction", "--batch_size", "--epoch_length"):
        assert expected in message, message
    with pytest.raises(OptionError, match="--epochs"):
        check_options(epochs=True)  # a bool is not an epoch count
    with pytest.raises(OptionError, match="--learning_rate"):
        check_options(learning_rate=float("nan"))
    with pytest.raises(KeyError, match="no rule for option 'epoch'"):
        check_options(epoch=1)


@pytest.mark.parametrize("bundle", ["ddad", "pdd", "d24fad"])
@pytest.mark.parametrize("override", [{"epochs": "abc"}, {"threshold_quantile": 2}])
def test_bad_options_stop_a_bundle_before_anything_is_trained(bundle, override, tmp_path):
    train, meta = _configs(bundle)
    with pytest.raises(Exception) as err:  # bundle_workflow initialises, as `monai.bundle run` does first
        bundle_workflow(train, meta, run_id="training", bundle_root=str(tmp_path), **override).run()
    chain, e = [], err.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(c, OptionError) and f"--{next(iter(override))}" in str(c) for c in chain), chain
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_remove_stale_temporaries_only_touches_the_files_of_that_path(tmp_path):
    model = tmp_path / "model.pt"
    stale = [tmp_path / ".model.pt.abc123.tmp", tmp_path / ".model.pt.x.tmp"]
    keep = [tmp_path / ".other.pt.abc.tmp", tmp_path / "model.pt.tmp", model]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert remove_stale_temporaries(model) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert remove_stale_temporaries(tmp_path / "missing" / "model.pt") == []


def test_model_saver_writes_epoch_checkpoints_beside_the_model_and_cleans_up(tmp_path):
    net = nn.Linear(2, 1)
    (tmp_path / ".model.pt.killed.tmp").write_bytes(b"partial")
    engine = Engine(lambda e, b: None)
    AtomicModelSaver(tmp_path, net, epoch_interval=1).attach(engine)
    seen = []

    @engine.on(Events.EPOCH_COMPLETED)
    def _model_untouched_during_training(e):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))

    engine.run([0], max_epochs=2)
    assert seen == [["model.last_epoch.pt"], ["model.last_epoch.pt"]]  # never model.pt before the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.last_epoch.pt", "model.pt"]
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight)


def test_ddad_failing_after_its_stages_keeps_the_previous_model(tmp_path, monkeypatch):
    """A run that fails after training (here: in the served-map choice) leaves the earlier model.pt as it was,
    keeps the trained stages in their own files, and removes the temporary file a killed save had left."""
    train, meta = _configs("ddad")
    tiny = {"epochs": 1, "asr_epochs": 1, "num_members": 2, "image_size": 32, "network_def#multiplier": 0.25}
    wf = bundle_workflow(train, meta, run_id="training", bundle_root=str(tmp_path), **tiny)
    wf.run()
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["model.pt", "training_report.json"]  # stage files removed
    before = (models / "model.pt").read_bytes()
    (models / ".model.pt.killed.tmp").write_bytes(b"partial")

    def fail(self):
        raise RuntimeError("simulated failure after the stages")

    monkeypatch.setattr(DDADTraining, "_select", fail)
    wf = bundle_workflow(train, meta, run_id="training", bundle_root=str(tmp_path), seed=1, **tiny)
    with pytest.raises(RuntimeError, match="ConfigExpression") as err:  # MONAI wraps the run expression's error
        wf.run()
    assert "simulated failure" in str(err.value.__cause__)
    assert (models / "model.pt").read_bytes() == before
    assert sorted(p.name for p in models.iterdir()) == [
        "model.asr.pt",
        "model.ndm.pt",
        "model.pt",
        "model.udm.pt",
        "training_report.json",
    ]
    stage = torch.load(models / "model.asr.pt", weights_only=True)
    assert stage["stage"] == "ASR" and not torch.isfinite(
        stage["network"]["threshold"]
    )  # the stage states are not calibrated models
    assert not any(name.endswith(".tmp") for name in os.listdir(models))


def test_an_uncalibrated_model_is_served_with_a_loud_warning(caplog):
    from medad_monai.transforms import ThresholdDecisiond

    net = nn.Module()
    net.register_buffer("threshold", torch.tensor(float("nan")))
    decide = ThresholdDecisiond(net)
    with caplog.at_level("WARNING", logger="medad_monai"):
        rows = [decide({"score": torch.tensor(s)}) for s in (0.1, 5.0)]
    assert [r["decision"] for r in rows] == [-1, -1]
    warnings = [r for r in caplog.records if "no calibrated threshold" in r.getMessage()]
    assert len(warnings) == 1  # once per run, not per image
    net.threshold.fill_(1.0)
    assert [decide({"score": torch.tensor(s)})["decision"] for s in (0.1, 5.0)] == [0, 1]


def test_maps_of_sources_with_the_same_stem_never_overwrite_each_other(tmp_path):
    from monai.data import MetaTensor

    from medad_monai.transforms import SaveAnomalyMapd

    save = SaveAnomalyMapd(keys="pred", output_dir=str(tmp_path / "out"))
    sources = ["/data/a/x.png", "/data/b/x.png", "/data/x.dcm", "/data/a/x.png"]
    written = []
    for i, src in enumerate(sources):
        image = MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": src})
        out = save({"image": image, "pred": MetaTensor(torch.full((1, 4, 4), float(i)))})
        written.append(Path(out["pred_file"]).name)
    assert written[0] == "x_anomaly_map.nii.gz" and written[3] == written[0]  # the same source keeps its name
    assert len(set(written[:3])) == 3 and all(w.startswith("x_") for w in written)
    import nibabel as nib

    values = {w: float(nib.load(tmp_path / "out" / w).get_fdata().max()) for w in written[1:3]}
    assert sorted(values.values()) == [1.0, 2.0]  # each file holds its own map


def test_evaluation_without_abnormal_test_images_refuses_with_the_counts(tmp_path):
    import numpy as np
    from PIL import Image

    from medad_monai.data.datalists import AnomalyDatalist

    for split in ("train/good", "test/good"):
        (tmp_path / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
    data = AnomalyDatalist(tmp_path)
    assert len(data.test) == 3  # inference-style access still works
    with pytest.raises(ValueError, match=r"holds 3 normal \(test/good\) and 0 abnormal \(test/bad\)"):
        _ = data.evaluation
    (tmp_path / "test" / "bad").mkdir()
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(tmp_path / "test" / "bad" / "b.png")
    assert [it["label"] for it in data.evaluation].count(1) == 1


def test_too_few_training_normals_are_named_in_terms_of_the_folder_and_val_fraction(tmp_path):
    import numpy as np
    from PIL import Image

    from medad_monai.data.datalists import AnomalyDatalist

    (tmp_path / "train" / "good").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(tmp_path / "train" / "good" / f"{i}.png")
    data = AnomalyDatalist(tmp_path, val_fraction=0.2, min_train=2)
    with pytest.raises(ValueError, match=r"train/good': 2 normal images, 1 held out .*val_fraction 0.2.*leaves 1"):
        _ = data.train
    assert len(AnomalyDatalist(tmp_path, val_fraction=0.0, min_train=2).train) == 2
    with pytest.raises(ValueError, match=r"train/good': cannot hold out .*lower --val_fraction"):
        _ = AnomalyDatalist(tmp_path, val_fraction=0.9).train


def test_a_d24fad_support_folder_with_fewer_than_k_images_stops_training_before_it_starts(tmp_path):
    import numpy as np
    from PIL import Image

    support = tmp_path / "support"
    support.mkdir()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(support / "only.png")
    train, meta = _configs("d24fad")
    tiny = {"epochs": 1, "epoch_length": 2, "batch_size": 2, "num_support": 2, "teacher_weights": "random"}
    wf = bundle_workflow(train, meta, run_id="training", bundle_root=str(tmp_path), support_dir=str(support), **tiny)
    trained = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: trained.append(e.state.iteration)
    )
    with pytest.raises(RuntimeError) as err:
        wf.run()
    assert "has 1 normal image(s), fewer than num_support=2" in str(err.value.__cause__)
    assert trained == []  # not one training step


def test_model_version_follows_the_weights_not_the_file_bytes(tmp_path):
    from medad_monai.inference.bundle_model import file_version
    from medad_monai.io import atomic_torch_save

    state = {"w": torch.arange(6.0).reshape(2, 3), "threshold": torch.tensor(0.5)}
    a, b = atomic_torch_save(state, tmp_path / "a" / "model.pt"), atomic_torch_save(state, tmp_path / "b" / "model.pt")
    assert a.read_bytes() != b.read_bytes()  # the archive's folder is named after the random temporary file
    assert file_version(a) == file_version(b)
    changed = atomic_torch_save({**state, "threshold": torch.tensor(0.6)}, tmp_path / "c" / "model.pt")
    assert file_version(changed) != file_version(a)
    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"not a zip")
    assert len(file_version(plain)) == 16


def test_a_checkpoint_of_other_options_names_the_option_and_a_truncated_one_names_the_file(tmp_path):
    from test_volume_inference import TINY, make_ddad_bundle

    from medad_monai.handlers.checkpoint import CheckpointReadError
    from medad_monai.networks.architecture import ArchitectureMismatchError

    bundle = make_ddad_bundle(tmp_path / "bundle")  # a 2-member, quarter-width DDAD
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "in" / "a.png")

    def infer(**override):
        configs = bundle / "configs"
        wf = bundle_workflow(
            str(configs / "inference.json"), str(configs / "metadata.json"), workflow_type="infer",
            bundle_root=str(bundle), dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
            device="$torch.device('cpu')", **{**TINY, **override},
        )  # fmt: skip
        with pytest.raises(Exception) as err:
            wf.run()
        return actual_error(err.value)

    mismatch = infer(num_members=3)
    assert isinstance(mismatch, ArchitectureMismatchError)
    assert "trained with num_members=2, but the config builds num_members=3" in str(mismatch)
    assert "--num_members 2" in str(mismatch)
    model = bundle / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # an interrupted copy
    truncated = infer()
    assert isinstance(truncated, CheckpointReadError) and str(model) in str(truncated) and "truncated" in str(truncated)
    model.unlink()
    assert isinstance(infer(), CheckpointReadError) and "not found" in str(infer())


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    # a pickle whose loading would create a marker file: torch.load(weights_only=True) refuses it
    from medad_monai.inference.bundle_model import _load_state

    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pt"
    torch.save({"model": Bomb()}, path)
    with pytest.raises(Exception, match=str(path)):
        _load_state(path)
    assert not marker.exists()


# per bundle: small settings, the file whose appearance means "killed mid-training" (an epoch's or a stage's state),
# and what the resumed run logs when it continues instead of starting over (a fresh start gives the same weights)
RESUME_CASES = {
    "pdd": (
        ["--epochs", "2", "--batch_size", "3", "--decoder_blocks", "[1,1,1]", "--wrn_weights", "random",
         "--vmamba_weights", "random"],
        "training_state.pt",
        "--resume: continuing after epoch",
    ),
    "ddad": (
        ["--epochs", "2", "--asr_epochs", "2", "--num_members", "2", "--image_size", "32",
         "--network_def#multiplier", "0.25"],
        "model.ndm.pt",
        "DDAD --resume: stages up to",
    ),
    # an epoch of 3 batches splits a pass over the data (40 batches): the resumed run must continue the pass mid-way
    "d24fad": (
        ["--epochs", "2", "--epoch_length", "3", "--batch_size", "2", "--sources", "['demo:chest_xray']",
         "--teacher_weights", "random", "--image_size", "32"],
        "training_state.pt",
        "--resume: continuing after epoch",
    ),
}  # fmt: skip


def _train_command(bundle: str, data: Path | None, root: Path, *extra: str) -> list[str]:
    train, meta = _configs(bundle)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", train, "--meta_file", meta]
    cmd += ["--bundle_root", str(root), "--device", "$torch.device('cpu')", *RESUME_CASES[bundle][0], *extra]
    return cmd + (["--dataset_dir", str(data)] if data is not None else [])


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["pdd", "ddad", "d24fad"])
def test_a_killed_training_resumes_to_the_result_of_an_uninterrupted_run(bundle, tmp_path):
    data = None  # DDAD: the demo brains (normals and an unlabeled pool); D24FAD: demo sources; PDD: 8 small normals
    if bundle == "pdd":
        data = tmp_path / "data"
        (data / "train" / "good").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / "train" / "good" / f"n{i}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same float sums in every run
    whole = tmp_path / "whole"
    subprocess.run(_train_command(bundle, data, whole), check=True, env=env, capture_output=True, timeout=900)
    cut = tmp_path / "cut"
    marker = cut / "models" / RESUME_CASES[bundle][1]
    proc = subprocess.Popen(_train_command(bundle, data, cut), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 900
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-training: after an epoch's (PDD) or the first stage's (DDAD) state
    proc.wait()
    assert marker.is_file() and not (cut / "models" / "model.pt").exists()
    resumed = subprocess.run(_train_command(bundle, data, cut, "--resume", "True"), env=env, capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RESUME_CASES[bundle][2] in resumed.stderr + resumed.stdout  # it continued, it did not start over
    a = torch.load(whole / "models" / "model.pt", weights_only=True)
    b = torch.load(cut / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert not marker.exists()  # removed once the training completed


def test_atomic_outputs_follow_the_umask_not_mkstemps_0600(tmp_path):
    # a DICOM router or a viewer running as another user must be able to read the outputs
    from medad_monai.data.demo import DemoSpec, ensure_demo_domain
    from medad_monai.io import atomic_torch_save, atomic_write_text

    old = os.umask(0o022)
    try:
        text = atomic_write_text("x", tmp_path / "a.json")
        model = atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "model.pt")
        demo = ensure_demo_domain("fundus", tmp_path / "demo", DemoSpec(n_train=1, n_unlabeled=0, n_test_good=1))
        os.umask(0o077)
        private = atomic_write_text("x", tmp_path / "b.json")
    finally:
        os.umask(old)
    assert (text.stat().st_mode & 0o777, model.stat().st_mode & 0o777) == (0o644, 0o644)
    assert demo.stat().st_mode & 0o777 == 0o755  # the shared demo data, not mkdtemp's 0700
    assert private.stat().st_mode & 0o777 == 0o600
