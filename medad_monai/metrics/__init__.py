"""Anomaly-detection metrics computed exactly from scores."""
