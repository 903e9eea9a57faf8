"""The MAP's application module: the application itself lives in :mod:`medad_monai.deploy.app`."""

from medad_monai.deploy.app import AnomalyDetectionApp, main

__all__ = ["AnomalyDetectionApp", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
