"""Experiment tracking the MONAI way: ``--tracking mlflow`` (MONAI's built-in settings, the local SQLite store
``<output_dir>/mlruns.db``) records each bundle's parameters, per-epoch losses and evaluation metrics; the bundles'
``tensorboard_dir`` option writes TensorBoard event files through MONAI's ``TensorBoardStatsHandler``.

Short runs of the tiny models of the bundle tests (two epochs, so that a history has one value per epoch) and an
evaluation on a quarter of the demo test set; about a minute on 2 CPU cores. Needs the ``tracking`` extra."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import test_d24fad_bundle
import test_ddad_bundle
import test_pdd_bundle
from bundle_testing import bundle_workflow, train_bundle
from ignite.engine import Engine
from monai.utils import path_to_sqlite_uri

from medad_monai.handlers.tracking import RunTracking

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
# evaluation: every 4th image of the demo test set (16, both classes), no bootstrap intervals
EVALUATE = {"bootstrap": 0, "evaluate#dataset#data": "$@data.evaluation[::4]"}


@dataclass
class Case:
    """A bundle's tiny run and what its MLflow runs must hold."""

    override: dict[str, Any]
    # per-epoch metric -> number of epochs it is recorded for
    epoch_metrics: dict[str, int]
    # run parameters (bundle options and MONAI's own) -> expected value, as MLflow stores it
    params: dict[str, str]
    scores: list[str]
    train_metrics: list[str] = field(default_factory=list)
    eval_metrics: list[str] = field(default_factory=list)


CASES = {
    "pdd": Case(
        override={**test_pdd_bundle.TINY, "epochs": 2, "epoch_length": 2},
        epoch_metrics={f"epoch_{term}": 2 for term in ("loss", "prior", "plain", "div")},
        params={"max_epochs": "2", "epoch_length": "2", "learning_rate": "0.002", "decoder_blocks": "[1, 1, 1]"},
        scores=["score"],
        train_metrics=["threshold"],  # the validator's calibration, recorded into the training run
        eval_metrics=["pixel_auroc"],
    ),
    "ddad": Case(
        override={**test_ddad_bundle.TINY, "epochs": 2},
        # every stage in the one run: NDM and UDM for `epochs`, ASR-Net for `asr_epochs`
        epoch_metrics={"ndm_epoch_loss": 2, "ndm_epoch_rec": 2, "udm_epoch_loss": 2, "asr_epoch_loss": 1},
        params={"max_epochs": "2", "num_members": "2", "asr_epochs": "1", "backbone": "ae-u"},
        scores=["rec", "intra", "inter", "r_intra", "r_dual"],
        train_metrics=["threshold"],  # the calibration after the last stage
    ),
    "d24fad": Case(
        override={**test_d24fad_bundle.TINY, "epochs": 2, "epoch_length": 2},
        epoch_metrics={"epoch_loss": 2, "epoch_ssd": 2, "epoch_tsd": 2},
        params={"max_epochs": "2", "epoch_length": "2", "num_support": "2", "target": "demo:head_ct"},
        scores=["score"],
        eval_metrics=["pixel_auroc"],
    ),
}


def _configs(bundle: str) -> tuple[str, str, str]:
    configs = BUNDLES / bundle / "configs"
    return str(configs / "train.json"), str(configs / "evaluate.json"), str(configs / "metadata.json")


def _history(client: Any, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(CASES))
def test_tracking_mlflow_records_params_epoch_losses_and_evaluation_metrics(bundle, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    case = CASES[bundle]
    train, evaluate, meta = _configs(bundle)
    train_bundle(train, meta, tmp_path, tracking="mlflow", **case.override)
    wf = bundle_workflow(
        [train, evaluate], meta, run_id="evaluating", tracking="mlflow", bundle_root=str(tmp_path),
        **case.override, **EVALUATE,
    )  # fmt: skip
    wf.run()

    # MONAI's default store: a SQLite database in the bundle's output_dir, no server
    store = tmp_path / "eval" / "mlruns.db"
    assert store.is_file()
    client = mlflow.tracking.MlflowClient(path_to_sqlite_uri(str(store)))
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([experiment.experiment_id])
    # one run for the training (DDAD: all three stages and the calibration), one for the evaluation
    assert len(runs) == 2, [r.data.metrics for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs)
    (trained,) = [r for r in runs if "train_loss" in r.data.metrics]
    (evaluated,) = [r for r in runs if r is not trained]

    for name, value in case.params.items():
        assert trained.data.params.get(name) == value, (name, trained.data.params)
    assert trained.data.params["seed"] == "0"
    for metric, epochs in case.epoch_metrics.items():
        history = _history(client, trained.info.run_id, metric)
        assert [step for step, _ in history] == list(range(1, epochs + 1)), (metric, history)
        assert all(math.isfinite(v) for _, v in history), (metric, history)
    # the loss of every iteration (MONAI's own tag); its steps never repeat an epoch metric's
    steps = [step for step, _ in _history(client, trained.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and len(steps) >= 2
    if bundle != "ddad":  # one trainer: epochs x epoch_length iterations
        assert len(steps) == case.override["epochs"] * case.override["epoch_length"]
    for metric in case.train_metrics:
        assert metric in trained.data.metrics, trained.data.metrics

    metrics = evaluated.data.metrics
    for score in case.scores:
        assert 0.0 <= metrics[f"{score}_auroc"] <= 1.0, metrics
        assert 0.0 <= metrics[f"{score}_ap"] <= 1.0, metrics
    for metric in case.eval_metrics:
        assert 0.0 <= metrics[metric] <= 1.0, metrics


def test_tensorboard_dir_writes_the_loss_and_epoch_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, _, meta = _configs("pdd")
    override = CASES["pdd"].override
    train_bundle(train, meta, tmp_path / "bundle", tensorboard_dir=str(tmp_path / "tb"), **override)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "epoch_loss", "epoch_prior", "epoch_plain", "epoch_div"} <= scalars, scalars
    iterations = override["epochs"] * override["epoch_length"]
    assert [e.step for e in events.Scalars("train_loss")] == list(range(1, iterations + 1))
    assert [e.step for e in events.Scalars("epoch_loss")] == [1, 2]
    assert all(math.isfinite(e.value) for e in events.Scalars("epoch_loss"))


def test_without_tensorboard_dir_no_tensorboard_handler_is_built(tmp_path):
    train, _, meta = _configs("pdd")
    wf = bundle_workflow(train, meta, bundle_root=str(tmp_path))
    raw = wf.parser["train"]["handlers"]
    (index,) = [i for i, h in enumerate(raw) if h.get("_target_") == "TensorBoardStatsHandler"]
    assert wf.parser.get_parsed_content(f"train#handlers#{index}") is None  # disabled: tensorboard not needed


def test_a_continued_run_keeps_its_parameters_and_goes_on(tmp_path, caplog):
    """MONAI continues an unfinished run (e.g. after a crash); a changed option must not stop the training (MLflow
    refuses to change a logged parameter)."""
    mlflow = pytest.importorskip("mlflow")
    from monai.handlers import MLFlowHandler

    uri = path_to_sqlite_uri(str(tmp_path / "mlruns.db"))

    def run(params: dict[str, Any]) -> None:
        engine = Engine(lambda engine, batch: 0.0)
        handler = MLFlowHandler(tracking_uri=uri, iteration_log=False)  # no close_on_complete: stays unfinished
        handler.attach(engine)  # as the trainer does with its handlers, before the run's items are built
        RunTracking([handler], params=params, engines=[engine])
        engine.run([0, 1], max_epochs=1)

    run({"learning_rate": 0.1, "seed": 0, "max_epochs": 99})
    with caplog.at_level(logging.WARNING, logger="medad_monai"):
        run({"learning_rate": 0.2, "seed": 0, "batch_size": 4})
    client = mlflow.tracking.MlflowClient(uri)
    (only,) = client.search_runs([client.get_experiment_by_name("monai_experiment").experiment_id])
    # the first values stay; a new option is added; MONAI's own max_epochs is the engine's
    assert only.data.params == {"learning_rate": "0.1", "seed": "0", "batch_size": "4", "max_epochs": "1",
                                "epoch_length": "2"}  # fmt: skip
    assert "learning_rate" in caplog.text
