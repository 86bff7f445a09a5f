"""Step ``prepare``: load the configured data set, split it (stratified, seeded),
fingerprint it."""

from __future__ import annotations

from shrinkflow.core.records import DataArtifact
from shrinkflow.data.prepare import PrepareParams, prepare
from shrinkflow.steps.base import Context, step


@step("prepare", PrepareParams, stage="prepare")
def run(config: PrepareParams, ctx: Context) -> DataArtifact:
    """Load the data set, split it train/val/test by seed, record its fingerprint."""
    return prepare(config, ctx.out_dir / "prepared")
