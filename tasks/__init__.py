"""Prefect tasks: thin wrappers around library steps.

Each module is one step (its name is the step's name everywhere) and also runs as
``python -m tasks.<step>`` so that ``dvc.yaml`` stages execute the very same code.
"""
