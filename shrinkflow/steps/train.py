"""Step ``train``: train the teacher from scratch on the prepared data."""

from __future__ import annotations

from pydantic import Field, model_validator

from shrinkflow.core.config import Int, Section, Seed
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared
from shrinkflow.models.checkpoint import model_record, save_checkpoint
from shrinkflow.models.cnn import ArchParams
from shrinkflow.models.spec import ModelSpec, build
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitConfig, checkpoint_info, fit
from shrinkflow.steps.transfer import freeze, start_from


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
    # Random left-right mirroring (clothes, scenes; not digits or text).
    augment_flip: bool = False
    seed: Seed = 42
    # Transfer: start from a registered model (models:/NAME@ALIAS or models:/NAME/VERSION)
    # or a shrinkflow checkpoint file. The teacher takes that model's architecture (and
    # weights); its classifier is replaced when the classes differ. train.model is unused.
    init_from: str | None = Field(None, min_length=1)
    # Parameter-name prefixes to keep frozen while training (e.g. [features.0, features.1]).
    freeze: list[str] = Field(default_factory=list)
    # Set by the plan: the local checkpoint init_from resolved to (not a params key: the
    # cache key holds its sha256 instead, so it is left out of every dump).
    init_checkpoint: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _freeze_needs_names(self) -> TrainParams:
        if any(not p for p in self.freeze):
            raise ValueError("freeze: give parameter-name prefixes (e.g. features.0)")
        return self


@step("train", TrainParams, stage="train")
def run(config: TrainParams, ctx: Context, data: DataArtifact) -> ModelArtifact:
    """Train the teacher (seeded, early stopping on validation accuracy)."""
    if data.task == "embedding":  # the teacher is the pretrained encoder
        from shrinkflow.steps import embed

        return embed.teacher(config, ctx, data)
    splits = load_prepared(data.path)
    arch, source = config.model, None
    if config.init_from:
        model, arch, source = start_from(config, splits)
    else:
        model = build(config.model, splits.input_shape, splits.num_classes, seed=config.seed)
    frozen = freeze(model, config.freeze)
    cfg = FitConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                    seed=config.seed, patience=config.patience,
                    weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                    augment_shift=config.augment_shift, augment_flip=config.augment_flip,
                    threads=ctx.threads)
    result = fit(model, splits, cfg, desc=f"{ctx.model}:train")
    for hook in frozen:
        hook.remove()
    out = ctx.out_dir / "model.pt"
    for p in model.parameters():
        p.requires_grad_(True)
    save_checkpoint(model, arch, out, step="train", name=ctx.model, parent=None,
                    **({"init_from": source} if source else {}),
                    config=config.model_dump(mode="json"), config_hash=config.config_hash(),
                    history=[{**h, "step": "train"} for h in result.history],
                    **checkpoint_info(data, splits))
    return model_record(out, summary=result.summary())
