"""Step ``finetune``: train a model further, keeping pruned weights at exactly zero."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shrinkflow.core.config import Section
from shrinkflow.core.records import DataArtifact, ModelArtifact
from shrinkflow.data.prepare import load_prepared
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.spec import parse_spec
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitParams, derive, fit, fit_config_for, load_masks


class FinetuneStep(Section):
    """Train further, keeping pruned weights at exactly zero."""

    kind: Literal["finetune"] = "finetune"
    fit: FitParams = Field(default_factory=FitParams)


@step("finetune", FinetuneStep, stage="compress")
def run(config: FinetuneStep, ctx: Context, data: DataArtifact, model: ModelArtifact
        ) -> ModelArtifact:
    """Train further on the prepared data (pruning masks kept; on new data: transfer)."""
    net, ckpt = load_checkpoint(model.path)
    splits = load_prepared(data.path)
    masks = load_masks(ckpt)
    result = fit(net, splits, fit_config_for(config.fit, ctx.threads), masks=masks,
                 desc=f"{ctx.model}:finetune")
    return derive(model, net, parse_spec(ckpt["arch"]), config,
                  ctx.out_dir / "model.pt", data, splits, masks=masks, qat=ckpt.get("qat"),
                  summary=result.summary(), history=result.history)
