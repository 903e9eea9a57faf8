"""Ignite trainers, evaluators and iteration functions for each training scheme."""
