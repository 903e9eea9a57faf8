"""DDAD-ASR training: three MONAI trainers in sequence, then threshold calibration (MedIA 2023 §3.2-3.4).

1. NDM: K autoencoders on known normals;
2. UDM: K autoencoders on normals plus the unlabeled pool (skipped, with a log line, when there is no pool:
   the model then serves R_intra);
3. ASR-Net on synthetic patch anomalies of the normals, ensembles frozen;
4. calibration: the validation-normal evaluator sets the model's decision threshold.

The model is saved atomically after every stage, so an interrupted run keeps the finished stages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sized

from monai.engines import SupervisedEvaluator, SupervisedTrainer

from medad_monai.engines.distributed import is_rank_zero
from medad_monai.io import atomic_torch_save
from medad_monai.networks.ddad import DDAD

__all__ = ["DDADTraining"]

logger = logging.getLogger("medad_monai")


def _check_loader(trainer: SupervisedTrainer, name: str) -> None:
    loader = trainer.data_loader
    if isinstance(loader, Sized) and len(loader) == 0:
        n = len(loader.dataset) if hasattr(loader, "dataset") else "?"
        raise ValueError(
            f"{name}: the training loader yields no batch ({n} images, batch size "
            f"{getattr(loader, 'batch_size', '?')} with drop_last): add images or lower the batch size"
        )


class DDADTraining:
    """Runs the DDAD-ASR stages with the bundle's trainers.

    Args:
        network: the :class:`~medad_monai.networks.ddad.DDAD` model being trained.
        ndm_trainer, udm_trainer, asr_trainer: MONAI trainers of the three stages.
        calibrator: evaluator over validation normals whose handlers set ``network.threshold``.
        num_unlabeled: size of the unlabeled pool; 0 trains R_intra only.
        save_path: where the model's flat state dict is written (atomically) after each stage.
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
    ) -> None:
        self.network = network
        self.ndm_trainer, self.udm_trainer, self.asr_trainer = ndm_trainer, udm_trainer, asr_trainer
        self.calibrator = calibrator
        self.num_unlabeled = int(num_unlabeled)
        self.save_path = save_path

    def _save(self, stage: str) -> None:
        if not is_rank_zero():  # multi-process training: one writer
            return
        atomic_torch_save(self.network.state_dict(), self.save_path)
        logger.info(f"DDAD: saved the model after stage '{stage}' to {self.save_path}")

    def run(self) -> None:
        dual = self.num_unlabeled > 0
        if dual:
            logger.info(f"DDAD: unlabeled pool of {self.num_unlabeled} images: training NDM, UDM and R_dual/R_intra")
        else:
            logger.info(
                "DDAD: no unlabeled pool (train/unlabeled is empty or absent): training the NDM and R_intra "
                "only; the model will serve R_intra (A_inter and R_dual need a UDM)"
            )
        for name, trainer in (("NDM", self.ndm_trainer), ("UDM", self.udm_trainer), ("ASR", self.asr_trainer)):
            if name == "UDM" and not dual:
                continue
            _check_loader(trainer, f"DDAD {name} stage")
            logger.info(f"DDAD: stage {name}: {trainer.state.max_epochs} epochs")
            trainer.run()
            if name != "ASR":  # after any checkpoint a trainer's handlers may have loaded at start
                self.network.has_udm.fill_(name == "UDM")
            self._save(name)
        if self.calibrator is not None:
            self.calibrator.run()
            logger.info(f"DDAD: decision threshold {float(self.network.threshold):.6g} (validation normals)")
            self._save("calibration")
