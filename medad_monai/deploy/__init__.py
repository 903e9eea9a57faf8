"""MONAI Deploy integration: a Holoscan application that turns DICOM series, NIfTI volumes and PNG/JPEG pictures
into float anomaly maps, overlays, JSON scores and, for DICOM, a Comprehensive SR and a binary SEG in the source
study. Needs the optional extra ``pip install 'medad-monai[deploy]'`` (MONAI Deploy App SDK, highdicom).

- :mod:`~medad_monai.deploy.studies`: find studies and stray files in an input folder;
- :mod:`~medad_monai.deploy.scoring`: score one study with the serving core (:mod:`medad_monai.inference`);
- :mod:`~medad_monai.deploy.dicom_reports`: the DICOM SR and SEG (highdicom);
- :mod:`~medad_monai.deploy.operators`: the Holoscan operators;
- :mod:`~medad_monai.deploy.app`: the application, its options and ``main``.

The SDK is imported only by ``operators`` and ``app``, so the study discovery and DICOM builders work without it.
"""

from medad_monai.deploy.scoring import ScoredStudy, resolve_model_path, score_study
from medad_monai.deploy.studies import NoStudyError, StrayFile, Study, discover_studies

__all__ = ["NoStudyError", "ScoredStudy", "StrayFile", "Study", "discover_studies", "resolve_model_path", "score_study"]
