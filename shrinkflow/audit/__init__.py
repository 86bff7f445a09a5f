"""Audit a registered model: resolve it to its lineage records, verify every hash,
answer reverse queries, render the chain, and reproduce it through the executor."""
