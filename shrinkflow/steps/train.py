"""Step ``train``: train the teacher from scratch on the prepared data."""

from __future__ import annotations

from pydantic import Field

from shrinkflow.core.config import Int, Section, Seed
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared
from shrinkflow.models.checkpoint import model_record, save_checkpoint
from shrinkflow.models.cnn import ArchParams
from shrinkflow.models.spec import ModelSpec, build
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitConfig, checkpoint_info, fit


class TrainParams(Section):
    # The built-in CNN (these keys), {kind: mlp, ...}, or {factory: "pkg.mod:fn", kwargs}.
    model: ModelSpec = Field(default_factory=ArchParams)
    epochs: Int = Field(30, ge=1, le=10_000)
    batch_size: Int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(2e-3, gt=0, le=10, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Stop when validation accuracy has not improved for this many epochs.
    patience: Int = Field(5, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Random crop/shift augmentation, in pixels (0 = off).
    augment_shift: Int = Field(0, ge=0, le=8)
    seed: Seed = 42


@step("train", TrainParams, stage="train")
def run(config: TrainParams, ctx: Context, data: DataArtifact) -> ModelArtifact:
    """Train the teacher (seeded, early stopping on validation accuracy)."""
    splits = load_prepared(data.path)
    model = build(config.model, splits.input_shape, splits.num_classes, seed=config.seed)
    cfg = FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                    seed=config.seed, patience=config.patience,
                    weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                    augment_shift=config.augment_shift, threads=ctx.threads)
    result = fit(model, splits, cfg, desc=f"{ctx.model}:train")
    out = ctx.out_dir / "model.pt"
    save_checkpoint(model, config.model, out, step="train", name=ctx.model, parent=None,
                    config=config.model_dump(mode="json"), config_hash=config.config_hash(),
                    history=[{**h, "step": "train"} for h in result.history],
                    **checkpoint_info(data, splits))
    return model_record(out, summary=result.summary())
