"""Compare a bundle with anomalib's reverse distillation and PatchCore on the same data and machine
(docs/comparison.md).

- :mod:`~medad_monai.comparison.data`: the bundle's training/calibration/test data, read from its config;
- :mod:`~medad_monai.comparison.baselines`: anomalib's torch models, fitted with anomalib's recipe;
- :mod:`~medad_monai.comparison.worker`: one method in one process (its own peak memory);
- :mod:`~medad_monai.comparison.runner`: :func:`compare_with_anomalib`, the ``medad-monai compare-anomalib`` command;
- :mod:`~medad_monai.comparison.cache`: the key under which a baseline run is fitted once and reused;
- :mod:`~medad_monai.comparison.benchmark`: :func:`~medad_monai.comparison.benchmark.run_benchmark`, the
  ``medad-monai benchmark`` command (every bundle x demo domain x seed), reported by
  :mod:`~medad_monai.comparison.benchmark_report`.

anomalib is an optional dependency (``pip install -e '.[anomalib]'``); it is imported only when a baseline is built.
"""

from medad_monai.comparison.runner import DEFAULT_METHODS, compare_with_anomalib

__all__ = ["DEFAULT_METHODS", "compare_with_anomalib"]
