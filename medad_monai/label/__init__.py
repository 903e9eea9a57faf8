"""MONAI Label integration (needs ``monailabel``: ``pip install -e ".[label]"``, in its own environment since
``monailabel`` pins numpy<2).

- :class:`~medad_monai.label.app.AnomalyLabelApp`: the app (``apps/medad/main.py``) serving the bundles;
- :class:`~medad_monai.label.infer.AnomalyInferTask`: ``anomaly`` label or float heatmap plus the score;
- :class:`~medad_monai.label.train.AnomalyTrainTask`: trains a bundle on the studies reviewed normal;
- :class:`~medad_monai.label.strategy.AnomalyRankingStrategy`: ``most_anomalous`` / ``nearest_threshold``;
- :mod:`~medad_monai.label.datastore`: review status of datastore studies.
"""
