"""Readers for folder layouts and datalists, samplers and the embedded demo dataset."""
