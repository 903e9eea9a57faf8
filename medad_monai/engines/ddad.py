"""DDAD-ASR training: three MONAI trainers in sequence, label-free checks, then threshold calibration
(MedIA 2023 §3.2-3.4; the checks and the served-map choice are ours).

1. NDM: K autoencoders on known normals;
2. UDM: K autoencoders on normals plus the unlabeled pool (skipped, with a log line, when there is no pool:
   the model then serves R_intra);
3. (``refine_input="saturate"``) the saturating ASR input is fitted on the validation normals' maps;
4. ASR-Net on synthetic patch anomalies of the normals, ensembles frozen;
5. label-free checks of the refinement (:mod:`medad_monai.metrics.refinement_checks`): do the synthetic
   anomalies leave a trace in the discrepancy maps, and does the refined probability rise with the discrepancy?
   A failed check is a WARNING in the log;
6. (``output_map="auto"``) the served map is chosen by how well each image score separates held-out pool images
   from validation normals (:mod:`medad_monai.metrics.score_selection`);
7. calibration: the validation-normal evaluator sets the model's decision threshold.

After every stage the state is saved atomically to its own file beside the model (``model.ndm.pt``,
``model.udm.pt``, ``model.asr.pt``); ``model.pt`` itself is replaced only once every stage and the calibration have
finished (with a finite threshold), and the stage files are then removed. A run killed or failing half-way thus never
replaces a working model. The checks, the choice and its criteria go to ``training_report.json`` beside the model
(the evaluation copies it into ``metrics.json``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from medad_monai.distributed import is_rank_zero
from medad_monai.handlers.tracking import RunTracking
from medad_monai.io import atomic_torch_save, atomic_write_json, remove_stale_temporaries
from medad_monai.metrics.refinement_checks import is_non_decreasing, pixel_separation, probe_response
from medad_monai.metrics.score_selection import pool_separation, select_score
from medad_monai.networks.ddad import DDAD, OUTPUT_MAPS
from medad_monai.rng import rng_state, set_rng_state
from medad_monai.scores import image_score, score_reduction

__all__ = ["DDADTraining", "refinement_checks", "select_served_map"]

# The training stages, in order; each one's state is saved to its own file beside the model.
STAGES = ("NDM", "UDM", "ASR")

logger = logging.getLogger("medad_monai")

# Below this pixel AUROC (chance: 0.5) the synthetic anomalies leave no usable trace in a map.
SEPARATION_WARNING = 0.55
PROBE_LEVELS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
# The served maps "auto" chooses from, in the order that breaks ties (the paper's refined map first).
AUTO_ORDER: tuple[str, ...] = OUTPUT_MAPS


def _check_loader(trainer: SupervisedTrainer, name: str) -> None:
    loader = trainer.data_loader
    if isinstance(loader, Sized) and len(loader) == 0:
        n = len(loader.dataset) if hasattr(loader, "dataset") else "?"
        raise ValueError(
            f"{name}: the training loader yields no batch ({n} images, batch size "
            f"{getattr(loader, 'batch_size', '?')} with drop_last): add images or lower the batch size"
        )


def _batches(dataset: Dataset, keys: Sequence[str], batch_size: int, device: torch.device) -> Iterator[list[Tensor]]:
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield [torch.as_tensor(batch[k]).as_subclass(Tensor).to(device) for k in keys]


@torch.no_grad()
def _collect_maps(network: DDAD, dataset: Dataset, batch_size: int, with_mask: bool = False) -> dict[str, Tensor]:
    """Every map of :meth:`DDAD.all_maps` over ``dataset`` (and its ``mask`` under ``"mask"``), on the CPU."""
    device = next(network.parameters()).device
    out: dict[str, list[Tensor]] = {}
    for tensors in _batches(dataset, ["image", "mask"] if with_mask else ["image"], batch_size, device):
        maps = network.all_maps(tensors[0])
        if with_mask:
            maps["mask"] = tensors[1]
        for name, m in maps.items():
            out.setdefault(name, []).append(m.cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def _head_probability(network: DDAD, head: str) -> Callable[[Tensor], Tensor]:
    """``raw discrepancy channels -> P(anomaly)`` of one ASR head: ``r_dual`` reads (inter, intra), ``r_intra``
    reads (intra); the ``refine_input`` transform is applied as in :meth:`DDAD.refined_maps`."""

    def probability(raw: Tensor) -> Tensor:
        maps = {"intra": raw[:, -1:]} if head == "r_intra" else {"inter": raw[:, :1], "intra": raw[:, 1:2]}
        return torch.softmax(network.refined_maps(maps)[head], dim=1)[:, 1:2]

    return probability


@torch.no_grad()
def refinement_checks(network: DDAD, normals: Dataset, synthetic: Dataset, batch_size: int = 16) -> dict[str, Any]:
    """Label-free checks of the trained ASR heads (module docstring, step 5).

    Args:
        network: the trained model (eval mode is set here).
        normals: preprocessed validation normals (``image``).
        synthetic: validation normals with a synthetic anomaly each (``image``, ``mask``), made as in training.

    Returns:
        ``{"synthetic_pixel_auroc": {map: auroc}, "probe_levels": [...], "probe": {head: [P per level]},
        "monotone": {head: bool}, "warnings": [...]}``.
    """
    network.eval()
    synth = _collect_maps(network, synthetic, batch_size, with_mask=True)
    mask = synth.pop("mask")
    separation = pixel_separation(synth, mask)
    normal = _collect_maps(network, normals, batch_size)
    heads = [h for h in ("r_dual", "r_intra") if h in normal]
    channels = {"r_dual": ["inter", "intra"], "r_intra": ["intra"]}
    probe: dict[str, list[float]] = {}
    for head in heads:
        raw = torch.cat([normal[c] for c in channels[head]], dim=1)
        scale = torch.stack(
            [torch.quantile(normal[c].flatten()[:: max(1, normal[c].numel() // 2**20)], 0.99) for c in channels[head]]
        )
        probe[head] = probe_response(_head_probability(network, head), raw, scale, PROBE_LEVELS)
    monotone = {head: is_non_decreasing(values) for head, values in probe.items()}
    warnings = []
    inputs = [m for m in ("inter", "intra") if m in separation]
    if inputs and max(separation[m] for m in inputs) <= SEPARATION_WARNING:
        warnings.append(
            "the synthetic anomalies leave almost no trace in the discrepancy maps (pixel AUROC "
            + ", ".join(f"{m} {separation[m]:.2f}" for m in inputs)
            + " on validation normals): ASR-Net can only learn where patches tend to be, and its output on real "
            "lesions is not informative. Consider synthetic_source_location 'random', refinement 'monotone' or "
            "output_map 'auto' (bundle README)."
        )
    for head, ok in monotone.items():
        if not ok:
            warnings.append(
                f"{head}: the anomaly probability falls when the discrepancy rises beyond the training range "
                f"(probe at {list(PROBE_LEVELS)} x q99: {[round(v, 3) for v in probe[head]]}); real lesions with "
                "large discrepancies may be scored as normal. Consider refinement 'monotone' (bundle README)."
            )
    return {
        "synthetic_pixel_auroc": separation,
        "probe_levels": list(PROBE_LEVELS),
        "probe": probe,
        "monotone": monotone,
        "warnings": warnings,
    }


# Scores that read the UDM: only images the UDM never saw can judge them fairly.
_UDM_SCORES = ("inter", "r_dual")


@torch.no_grad()
def select_served_map(
    network: DDAD, normals: Dataset, pool_holdout: Dataset, pool_trained: Dataset | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """Choose the served map without labels (module docstring, step 6) and set it on ``network``.

    The criterion of each candidate is the AUROC of its image score (the map's mean) on unlabeled images against
    the validation normals (:func:`~medad_monai.metrics.score_selection.pool_separation`). Every image compared must
    be unseen by the models a score reads: scores of the UDM (``inter``, R_dual) use the held-out pool alone; scores
    of the NDM and ASR-Net alone (``rec``, ``intra``, R_intra) also use the pool the UDM trained on
    (``pool_trained``), which neither the NDM nor ASR-Net saw. Candidates are :data:`AUTO_ORDER` (``refined`` is
    R_dual with a UDM, else R_intra); ties go to the earlier one, and when no candidate exceeds 0.5 the paper's
    ``refined`` is kept.
    """
    network.eval()
    refined = "r_dual" if bool(network.has_udm) else "r_intra"
    names = {"refined": refined, "rec": "rec", "intra": "intra", "inter": "inter"}

    def scores(dataset: Dataset | None) -> dict[str, np.ndarray]:
        if dataset is None or len(dataset) == 0:  # type: ignore[arg-type]
            return {}
        maps = _collect_maps(network, dataset, batch_size)
        reduction = score_reduction(network)
        return {served: image_score(maps[key], reduction).numpy() for served, key in names.items() if key in maps}

    held_out, trained = scores(pool_holdout), scores(pool_trained)
    pool = {
        name: values if names[name] in _UDM_SCORES or name not in trained else np.r_[values, trained[name]]
        for name, values in held_out.items()
    }
    criteria = pool_separation(scores(normals), pool)
    chosen = select_score(criteria, AUTO_ORDER, fallback="refined")
    network.set_served_map(chosen)
    return {
        "criterion": "AUROC of the image score, unseen unlabeled images vs validation normals (no labels)",
        "values": criteria,
        "chosen": chosen,
        "n_normal": len(normals),  # type: ignore[arg-type]
        "n_pool": {name: len(values) for name, values in pool.items()},
    }


class DDADTraining:
    """Runs the DDAD-ASR stages with the bundle's trainers.

    Args:
        network: the :class:`~medad_monai.networks.ddad.DDAD` model being trained.
        ndm_trainer, udm_trainer, asr_trainer: MONAI trainers of the three stages.
        calibrator: evaluator over validation normals whose handlers set ``network.threshold``.
        num_unlabeled: size of the unlabeled pool the UDM trains on; 0 trains R_intra only.
        save_path: where the model's flat state dict is written (atomically) once training and calibration have
            succeeded; the stages' states go to ``<stem>.<stage><suffix>`` beside it.
        validation: preprocessed validation normals (needed by the checks, ``refine_input="saturate"`` and
            ``output_map="auto"``).
        synthetic_validation: the validation normals with one synthetic anomaly each (``image``, ``mask``), for the
            checks; ``None`` skips them.
        pool_holdout: preprocessed unlabeled images held out from the UDM, for ``output_map="auto"``.
        pool_trained: the preprocessed unlabeled images the UDM trains on (judge the NDM-only scores in ``auto``).
        report_path: where ``training_report.json`` is written; ``None``: next to ``save_path``.
        batch_size: batch size of the checks and the selection.
        resume: continue an interrupted run after its last finished stage: the stage file's network and random
            number generator states are loaded and the finished stages skipped, so the result equals an
            uninterrupted run of the same seed. Without a stage file the run starts from the beginning.
        tracking: experiment tracking (``--tracking mlflow``) of ``train#handlers``: every stage that runs and the
            calibration record into one run (MONAI attaches its handler to the NDM trainer alone and would end the
            run with it), which ends once the model is saved.
    """

    def __init__(
        self,
        network: DDAD,
        ndm_trainer: SupervisedTrainer,
        udm_trainer: SupervisedTrainer,
        asr_trainer: SupervisedTrainer,
        calibrator: SupervisedEvaluator | None,
        num_unlabeled: int,
        save_path: str | os.PathLike,
        validation: Dataset | None = None,
        synthetic_validation: Dataset | None = None,
        pool_holdout: Dataset | None = None,
        pool_trained: Dataset | None = None,
        report_path: str | os.PathLike | None = None,
        batch_size: int = 16,
        resume: bool = False,
        tracking: RunTracking | None = None,
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"--resume must be true or false, got {resume!r}")
        self.network = network
        self.ndm_trainer, self.udm_trainer, self.asr_trainer = ndm_trainer, udm_trainer, asr_trainer
        self.calibrator = calibrator
        self.num_unlabeled = int(num_unlabeled)
        self.save_path = save_path
        self.validation, self.synthetic_validation = validation, synthetic_validation
        self.pool_holdout, self.pool_trained = pool_holdout, pool_trained
        self.report_path = report_path or os.path.join(os.path.dirname(os.fspath(save_path)), "training_report.json")
        self.batch_size = int(batch_size)
        self.resume = resume
        self.tracking = tracking
        self.report: dict[str, Any] = {}

    def stage_path(self, stage: str) -> str:
        """The file of a stage's state, beside the model: ``model.pt`` -> ``model.ndm.pt``."""
        stem, suffix = os.path.splitext(os.fspath(self.save_path))
        return f"{stem}.{stage.lower()}{suffix}"

    def _save(self, stage: str) -> None:
        if not is_rank_zero():  # multi-process training: one writer
            return
        path = self.stage_path(stage)
        atomic_torch_save({"network": self.network.state_dict(), "rng": rng_state(), "stage": stage}, path)
        logger.info(f"DDAD: saved the state after stage '{stage}' to {path}")

    def _resume(self, stages: list[str]) -> list[str]:
        """Load the last finished stage's file (``resume``); returns the stages still to run."""
        done = [s for s in stages if os.path.isfile(self.stage_path(s))]
        if not done:
            logger.warning(f"DDAD --resume: no stage file beside {self.save_path}; training starts from the beginning")
            return stages
        last = stages[max(stages.index(s) for s in done)]
        path = self.stage_path(last)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state["network"])
        except Exception as e:
            raise RuntimeError(f"DDAD --resume: cannot load stage file '{path}': {type(e).__name__}: {e}") from e
        set_rng_state(state["rng"])
        remaining = stages[stages.index(last) + 1 :]
        logger.info(f"DDAD --resume: stages up to {last} loaded from {path}; running {remaining or 'none'}")
        return remaining

    def _clean(self) -> None:
        if not is_rank_zero():
            return
        paths = [self.save_path, *(self.stage_path(s) for s in STAGES)]
        for tmp in [t for p in paths for t in remove_stale_temporaries(p)]:
            logger.info(f"DDAD: removed {tmp}, left by an interrupted save")

    def _publish(self) -> None:
        """Swap the finished model in as ``model.pt`` and drop the stage files."""
        if not is_rank_zero():
            return
        atomic_torch_save(self.network.state_dict(), self.save_path)
        logger.info(f"DDAD: saved the model (every stage and the calibration finished) to {self.save_path}")
        for stage in STAGES:
            if os.path.exists(self.stage_path(stage)):
                os.remove(self.stage_path(stage))

    @staticmethod
    def _require(data: Dataset | None, message: str) -> None:
        if data is None or len(data) == 0:  # type: ignore[arg-type]
            raise ValueError(f"DDAD: {message}")

    def _fit_refinement_input(self) -> None:
        self._require(self.validation, "refine_input 'saturate' needs validation normals (val_fraction > 0)")
        self.network.eval()
        maps = _collect_maps(self.network, self.validation, self.batch_size)
        self.network.fit_refinement_input(maps)
        scale = [round(float(v), 6) for v in self.network.input_scale]
        logger.info(f"DDAD: saturating ASR input scale (inter, intra) = {scale} (0.99 quantile, validation normals)")
        self.report["input_scale"] = scale

    def _check_refinement(self) -> None:
        checks = refinement_checks(self.network, self.validation, self.synthetic_validation, self.batch_size)
        sep = ", ".join(f"{k} {v:.3f}" for k, v in checks["synthetic_pixel_auroc"].items())
        logger.info(f"DDAD check: pixel AUROC on synthetic anomalies of validation normals: {sep}")
        for head, values in checks["probe"].items():
            logger.info(
                f"DDAD check: {head} probe P(anomaly) at {checks['probe_levels']} x q99: "
                f"{[round(v, 3) for v in values]}"
            )
        for message in checks["warnings"]:
            logger.warning(f"DDAD check: {message}")
        self.report["refinement_checks"] = checks

    def _select(self) -> None:
        missing = [
            what
            for what, data in (
                ("validation normals (val_fraction > 0)", self.validation),
                ("held-out unlabeled images (a train/unlabeled pool and pool_holdout > 0)", self.pool_holdout),
            )
            if data is None or len(data) == 0  # type: ignore[arg-type]
        ]
        if missing:
            # The fallback is fixed in advance: the paper's refined map (R_dual with a UDM, else R_intra).
            fallback = self.network.served_map_name()
            logger.warning(
                f"DDAD: output_map 'auto' cannot judge the scores without {' and '.join(missing)}: serving the "
                f"paper's refined map '{fallback}'"
            )
            self.report["selection"] = {
                "chosen": fallback,
                "criterion": "fallback (no " + " and no ".join(missing) + ")",
            }
            return
        selection = select_served_map(
            self.network, self.validation, self.pool_holdout, self.pool_trained, self.batch_size
        )
        values = ", ".join(f"{k} {v:.3f}" for k, v in selection["values"].items())
        logger.info(f"DDAD: output_map 'auto' serves '{selection['chosen']}' ({selection['criterion']}: {values})")
        self.report["selection"] = selection

    def run(self) -> None:
        dual = self.num_unlabeled > 0
        if dual:
            logger.info(f"DDAD: unlabeled pool of {self.num_unlabeled} images: training NDM, UDM and R_dual/R_intra")
        else:
            logger.info(
                "DDAD: no unlabeled pool (train/unlabeled is empty or absent): training the NDM and R_intra "
                "only; the model will serve R_intra (A_inter and R_dual need a UDM)"
            )
        self._clean()
        self.report = {
            "output_map": self.network.output_map,
            "refinement": self.network.refinement,
            "refine_input": self.network.refine_input,
        }
        trainers = {"NDM": self.ndm_trainer, "UDM": self.udm_trainer, "ASR": self.asr_trainer}
        stages = [name for name in STAGES if dual or name != "UDM"]
        if self.resume:
            stages = self._resume(stages)
        for name in stages:
            trainer = trainers[name]
            if self.tracking is not None:
                self.tracking.follow(trainer)
                self.tracking.keep_open(trainer)
            if name == "ASR" and self.network.refine_input == "saturate":
                self._fit_refinement_input()
            _check_loader(trainer, f"DDAD {name} stage")
            logger.info(f"DDAD: stage {name}: {trainer.state.max_epochs} epochs")
            trainer.run()
            if name != "ASR":  # after any checkpoint a trainer's handlers may have loaded at start
                self.network.has_udm.fill_(name == "UDM")
            self._save(name)
        if self.validation is not None and self.synthetic_validation is not None:
            self._check_refinement()
        if self.network.output_map == "auto":
            self._select()
        self.report["served_map"] = self.network.served_map_name()
        if self.calibrator is not None:
            self.calibrator.run()
            threshold = float(self.network.threshold)
            if not np.isfinite(threshold):
                raise RuntimeError(
                    f"DDAD: threshold calibration gave {threshold} (no finite validation scores?); "
                    f"{self.save_path} was not replaced, the trained stages are in {self.stage_path('ASR')}"
                )
            logger.info(f"DDAD: decision threshold {threshold:.6g} (validation normals)")
        self.report["threshold"] = float(self.network.threshold)
        self._publish()
        if is_rank_zero():
            atomic_write_json(self.report, self.report_path)
        if self.tracking is not None:
            self.tracking.close()
