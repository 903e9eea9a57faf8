"""MONAI Label train task for an anomaly bundle: train on the studies marked normal, through the bundle's own
``train.json``.

Stock ``BundleTrainTask`` builds its datalist from images with a final label and splits it into training and
validation. :class:`AnomalyTrainTask` keeps everything else it does (``run`` id, ``bundle_root``, ``device``,
``train#trainer#max_epochs``, a ``CheckpointLoader`` to continue from the current model) and changes what the data
is (:mod:`medad_monai.label.datastore`):

* a 3D study contributes the slices along the app's axis that serving scores (its ``min_relative_body`` rule), so
  the model trains and is calibrated on the sections it will be served;
* ``train#dataset#data`` / ``validate#dataset#data``: the studies reviewed *normal*, split by ``val_split`` into
  whole studies (the slices of one volume are never on both sides: a threshold calibrated on slices of volumes the
  model trained on would be too low for new ones); the validation normals calibrate the stored threshold
  (docs/architecture.md, Contracts), so it needs at least one;
* when at least :data:`~medad_monai.inference.volume_calibration.MIN_VOLUMES` of the held-out normal studies are
  3D volumes, the trained model also gets a volume threshold calibrated on them, with the app's scoring options
  (:mod:`medad_monai.inference.volume_calibration`), so that new volumes are decided at the rate its quantile says;
* DDAD (a config with ``train#udm_dataset``): its unlabeled pool is every study not yet reviewed, so the UDM
  ensemble sees normals plus the unlabeled pool, as the method intends; the bundle's ``pool_holdout`` fraction of
  that pool is held out (``train#pool_holdout_dataset``) for the label-free choice of the served map;
* D²4FAD (a config whose training dataset is episodic over source datasets, with ``support_dir``): the model
  trains on its configured source datasets and the datastore's normals become the target's support set and
  calibration normals, the method's few-shot setting;
* other epoch counts of a staged config (``asr_epochs``) scale with ``max_epochs`` by the bundle's own ratio.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.data import partition_dataset
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.train.bundle import BundleTrainTask

from medad_monai.data.datalists import split_pool
from medad_monai.errors import actual_error, describe_error
from medad_monai.inference import ScoringOptions, load_bundle_model
from medad_monai.inference.volume_calibration import MIN_VOLUMES, calibrate_volume_threshold, store_volume_calibration
from medad_monai.label.datastore import (
    ReviewStatus,
    is_volume_study,
    studies_by_status,
    training_items,
    training_items_by_study,
)

__all__ = ["AnomalyTrainTask"]

logger = logging.getLogger("medad_monai")

SCALED_EPOCH_KEYS = ("asr_epochs",)
# batch sizes of loaders over the reviewed training normals (drop_last): capped by how many there are
BATCH_KEYS = ("batch_size", "asr_batch_size")
# the smallest training batch: BatchNorm cannot train on a single image
MIN_TRAINING_NORMALS = 2


class AnomalyTrainTask(BundleTrainTask):
    """Train task for one anomaly bundle folder.

    Args:
        path: the bundle folder; conf: the app's configuration.
        slice_cache: where the 2D slices of 3D studies are written for the 2D training configs.
        axis: the slicing axis of 3D studies, when ``scoring`` is not given.
        scoring: the app's scoring options (as for inference): the slicing axis, and the options a volume threshold
            calibrated after training holds for.
    """

    def __init__(
        self,
        path: str | Path,
        conf: dict[str, str] | None = None,
        slice_cache: str | Path = ".",
        axis: int = 2,
        scoring: ScoringOptions | None = None,
    ) -> None:
        # strict loading: a checkpoint that does not fit the bundle's network must fail, not half-load
        super().__init__(str(path), conf or {}, load_strict=True)
        self.scoring = scoring if scoring is not None else ScoringOptions(axis=int(axis))
        self.slice_cache, self.axis = Path(slice_cache), self.scoring.axis
        self._unlabeled: list[dict[str, Any]] = []
        self._normals: list[dict[str, Any]] = []
        self._normal_studies: dict[str, list[dict[str, Any]]] = {}
        self._held_out_volumes: list[str] = []
        self._max_epochs: int | None = None

    def config(self) -> dict[str, Any]:
        c = super().config()
        c.update({"max_epochs": 10, "val_split": 0.2, "multi_gpu": False})
        return c

    def _fetch_datalist(self, request: dict[str, Any], datastore: Any) -> list[dict[str, Any]]:
        groups = studies_by_status(datastore)
        uris = {k: [datastore.get_image_uri(i) for i in ids] for k, ids in groups.items()}
        # a volume's slices that serving scores (the relative body rule of the app's scoring options)
        body = self.scoring.min_relative_body
        self._normal_studies, bad_normals = training_items_by_study(
            uris[ReviewStatus.NORMAL], 0, self.axis, self.slice_cache, body
        )
        self._normals = [item for items in self._normal_studies.values() for item in items]
        self._held_out_volumes = []
        self._unlabeled, bad_pool = training_items(uris[ReviewStatus.UNLABELED], -1, self.axis, self.slice_cache, body)
        logger.info(
            f"{Path(self.bundle_path).name}: {len(uris[ReviewStatus.NORMAL])} studies reviewed normal "
            f"({len(self._normals)} 2D images), {len(uris[ReviewStatus.ANOMALOUS])} anomalous (not used), "
            f"{len(uris[ReviewStatus.UNLABELED])} unreviewed ({len(self._unlabeled)} 2D images); "
            f"{len(bad_normals) + len(bad_pool)} unreadable left out"
        )
        least = self._min_normals()
        if len(self._normals) < least:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"training '{Path(self.bundle_path).name}' needs at least {least} readable 2D images reviewed normal "
                f'(an empty final label, or image info {{"review": "normal"}}); the datastore has '
                f"{len(self._normals)}",
            )
        return self._normals

    @property
    def _episodic(self) -> bool:
        """Whether the bundle trains on episodes over its own source datasets (D²4FAD), not on the normals."""
        dataset = self.bundle_config.get("train#dataset")
        return isinstance(dataset, dict) and "data" not in dataset

    def _min_normals(self) -> int:
        """Reviewed normals training needs: D²4FAD's K supports; otherwise two to train on (a batch of two:
        BatchNorm cannot train on one image) and one to calibrate the threshold on."""
        if self._episodic:
            return max(2, int(self.bundle_config.get("num_support", 2)))
        return MIN_TRAINING_NORMALS + 1

    def _partition_datalist(self, datalist, request, shuffle=False):
        val_split = float(request.get("val_split", 0.2))
        keep = 1 if self._episodic else MIN_TRAINING_NORMALS  # D²4FAD does not train on them
        by_study = self._split_by_study(val_split, keep) if datalist == self._normals else None
        if by_study is not None:
            return by_study
        if val_split <= 0:  # the threshold is calibrated on validation normals: keep at least one
            val_split = 1.0 / len(datalist)
        n_val = min(len(datalist) - keep, max(1, round(len(datalist) * val_split)))
        train, val = partition_dataset(datalist, ratios=[len(datalist) - n_val, n_val], shuffle=shuffle)
        if len(self._normal_studies) == 1 and is_volume_study(*next(iter(self._normal_studies.items()))):
            logger.warning(
                "one study reviewed normal: its slices both train the model and calibrate its threshold, which will "
                "be lower than new volumes need; review more normal studies"
            )
        logger.info(f"normals: {len(train)} for training, {len(val)} for threshold calibration")
        return train, val

    def _split_by_study(self, val_split: float, keep: int) -> tuple[list, list] | None:
        """Training and validation normals as whole studies: the last ``val_split`` of the reviewed normal studies
        (at least one, in datastore order) for calibration, the others for training, as long as those keep ``keep``
        images; ``None`` when that cannot be (fewer than two studies, or too few training images left)."""
        studies = [(s, items) for s, items in self._normal_studies.items() if items]
        n_val = max(1, round(len(studies) * val_split))
        while n_val >= 1:
            train = [item for _, items in studies[: len(studies) - n_val] for item in items]
            if len(train) >= keep and len(studies) - n_val >= 1:
                break
            n_val -= 1
        if n_val < 1:
            return None
        held = studies[len(studies) - n_val :]
        val = [item for _, items in held for item in items]
        self._held_out_volumes = [s for s, items in held if is_volume_study(s, items)]
        logger.info(
            f"normals: {len(train)} images of {len(studies) - n_val} studies for training, {len(val)} images of "
            f"{n_val} studies ({len(self._held_out_volumes)} volumes) for threshold calibration"
        )
        return train, val

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        max_epochs = request.get("max_epochs", 10)
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            # checked before any data is read: Ignite would stop only inside the run, after the slices are written
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"training '{Path(self.bundle_path).name}': max_epochs must be a positive integer, got {max_epochs!r}",
            )
        self._max_epochs = max_epochs
        return super().__call__(request, datastore)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        cfg = self.bundle_config
        train_data = overrides.get(self.const.key_train_dataset_data(), [])
        pool, holdout = self._unlabeled, []
        if cfg.get("train#pool_holdout_dataset") is not None:  # DDAD: part of the pool for the label-free choice
            pool, holdout = split_pool(self._unlabeled, float(cfg.get("pool_holdout", 0.0)), int(cfg.get("seed", 0)))
            overrides["train#pool_holdout_dataset#data"] = holdout
            if cfg.get("train#pool_dataset") is not None:
                overrides["train#pool_dataset#data"] = pool
        if cfg.get("train#udm_dataset") is not None:  # DDAD: UDM = normals + the unreviewed pool
            overrides["train#udm_dataset#data"] = list(train_data) + pool
        if cfg.get("train#pipeline#num_unlabeled") is not None:  # DDAD trains R_intra only without a pool
            overrides["train#pipeline#num_unlabeled"] = len(pool)
        if self._episodic:
            # episodic training over source datasets (D²4FAD): the normals are the target's support set
            overrides.pop(self.const.key_train_dataset_data(), None)
            overrides.pop(self.const.key_validate_dataset_data(), None)
            if cfg.get("support_dir") is not None:
                overrides["support_dir"] = self._normals
        else:  # a few reviewed normals: batches no larger than the training set (drop_last)
            for key in BATCH_KEYS:
                value = cfg.get(key)
                if isinstance(value, int) and value > len(train_data):
                    overrides[key] = max(MIN_TRAINING_NORMALS, len(train_data))
        base = cfg.get("epochs")
        if self._max_epochs and isinstance(base, int) and base > 0:
            for key in SCALED_EPOCH_KEYS:
                value = cfg.get(key)
                if isinstance(value, int):
                    overrides[key] = max(1, round(value * self._max_epochs / base))
        shown = {k: (f"{len(v)} items" if isinstance(v, list) else v) for k, v in overrides.items()}
        logger.info(f"train overrides: {shown}")
        return overrides

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """The bundle's training; a failure ends with its actual cause, which ``GET /train/`` shows the client.

        MONAI Label runs training without the config's ``initialize`` items, so the bundles' error summary is not
        installed, and the last lines the client gets would be MONAI's wrapper (``Failed to evaluate
        ConfigExpression``), with the cause only in the server log."""
        try:
            super().run_single_gpu(request, overrides)
        except Exception as e:
            if actual_error(e) is e:
                raise
            logger.error(f"training '{Path(self.bundle_path).name}' failed", exc_info=e)  # the whole chain
            raise RuntimeError(f"training '{Path(self.bundle_path).name}' failed: {describe_error(e)}") from None
        self._calibrate_volumes(str(request.get("device", "cpu")))

    def run_multi_gpu(self, request: dict[str, Any], cmd: Any, env: Any) -> None:
        super().run_multi_gpu(request, cmd, env)
        self._calibrate_volumes(str(request.get("device", "cuda")))

    def _calibrate_volumes(self, device: str) -> None:
        """After training: a volume threshold from the held-out normal volumes, when there are enough of them.

        Training has already written the model (and cleared any volume threshold of its earlier weights); a failure
        here leaves that model as it is, deciding volumes with its image threshold, and is logged, not raised."""
        name, volumes = Path(self.bundle_path).name, self._held_out_volumes
        if self._episodic or len(volumes) < MIN_VOLUMES:
            if volumes:
                logger.info(
                    f"{name}: {len(volumes)} held-out normal volumes, a volume threshold needs {MIN_VOLUMES} (review "
                    "more normal volumes, or raise val_split); 3D studies are decided with the image threshold"
                )
            return
        try:
            model = load_bundle_model(self.bundle_path, device=device, setup="auto")
            calibration, scores = calibrate_volume_threshold(model, volumes, self.scoring)
            store_volume_calibration(self.bundle_path, calibration)
        except Exception as e:
            logger.error(f"{name}: the volume threshold could not be calibrated: {describe_error(e)}", exc_info=e)
            return
        logger.info(
            f"{name}: volume threshold {calibration.threshold:.6g}, the {calibration.quantile:g} quantile of "
            f"{len(scores)} held-out normal volumes scored as served ({calibration.volume_reduction}, axis "
            f"{calibration.axis})"
        )

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        # the stock method calls os.path.exists(None) when pretrained is false
        if pretrained and model_pytorch and Path(model_pytorch).is_file():
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
