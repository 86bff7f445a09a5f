"""Prefect flows: wiring only (which tasks, in which order, with which params)."""
