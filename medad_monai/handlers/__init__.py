"""Ignite handlers: threshold calibration, score reports, plots."""
