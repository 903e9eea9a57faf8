"""medad_monai: medical image anomaly detection methods (DDAD-ASR, D²4FAD, PDD) as MONAI components and bundles."""

__version__ = "0.1.0"
