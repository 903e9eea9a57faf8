"""MONAI Label app for medad-monai's anomaly bundles.

    monailabel start_server --app apps/medad --studies /path/to/studies --conf models all

The app's logic lives in :mod:`medad_monai.label` (``pip install -e ".[label]"``); see the README's
"MONAI Label" section and ``docs/monai_label.md``.
"""

from medad_monai.label.app import AnomalyLabelApp


class MedADApp(AnomalyLabelApp):
    """The class ``monailabel start_server`` instantiates (it looks for a ``MONAILabelApp`` subclass here)."""
