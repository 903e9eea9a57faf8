"""MONAI Label train task for an anomaly bundle: train on the studies marked normal, through the bundle's own
``train.json``.

Stock ``BundleTrainTask`` builds its datalist from images with a final label and splits it into training and
validation. :class:`AnomalyTrainTask` keeps everything else it does (``run`` id, ``bundle_root``, ``device``,
``train#trainer#max_epochs``, a ``CheckpointLoader`` to continue from the current model) and changes what the data
is (:mod:`medad_monai.label.datastore`):

* ``train#dataset#data`` / ``validate#dataset#data``: the studies reviewed *normal*, split by ``val_split``; the
  validation normals calibrate the stored threshold (docs/architecture.md, Contracts), so it needs at least one;
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
from medad_monai.label.datastore import ReviewStatus, studies_by_status, training_items

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
        axis: the slicing axis of 3D studies (the app's, as for inference).
    """

    def __init__(
        self, path: str | Path, conf: dict[str, str] | None = None, slice_cache: str | Path = ".", axis: int = 2
    ) -> None:
        # strict loading: a checkpoint that does not fit the bundle's network must fail, not half-load
        super().__init__(str(path), conf or {}, load_strict=True)
        self.slice_cache, self.axis = Path(slice_cache), int(axis)
        self._unlabeled: list[dict[str, Any]] = []
        self._normals: list[dict[str, Any]] = []
        self._max_epochs: int | None = None

    def config(self) -> dict[str, Any]:
        c = super().config()
        c.update({"max_epochs": 10, "val_split": 0.2, "multi_gpu": False})
        return c

    def _fetch_datalist(self, request: dict[str, Any], datastore: Any) -> list[dict[str, Any]]:
        groups = studies_by_status(datastore)
        uris = {k: [datastore.get_image_uri(i) for i in ids] for k, ids in groups.items()}
        self._normals, bad_normals = training_items(uris[ReviewStatus.NORMAL], 0, self.axis, self.slice_cache)
        self._unlabeled, bad_pool = training_items(uris[ReviewStatus.UNLABELED], -1, self.axis, self.slice_cache)
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
        if val_split <= 0:  # the threshold is calibrated on validation normals: keep at least one
            val_split = 1.0 / len(datalist)
        keep = 1 if self._episodic else MIN_TRAINING_NORMALS  # D²4FAD does not train on them
        n_val = min(len(datalist) - keep, max(1, round(len(datalist) * val_split)))
        train, val = partition_dataset(datalist, ratios=[len(datalist) - n_val, n_val], shuffle=shuffle)
        logger.info(f"normals: {len(train)} for training, {len(val)} for threshold calibration")
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

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        # the stock method calls os.path.exists(None) when pretrained is false
        if pretrained and model_pytorch and Path(model_pytorch).is_file():
            super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
