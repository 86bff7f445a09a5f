"""Typed model of ``params.yaml``, parsed and validated once, at the edge.

Each section is declared by the module that reads it (a step declares its config, the
decide layer its gates); this module assembles them. The union of variant step kinds
comes from the step registry, so a new step kind needs no edit here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import ConfigDict, Field, model_validator

from shrinkflow.core.config import (
    Int,
    Section,
    apply_overrides,
    read_yaml,
    validate_section,
    yaml_dump,
)
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import PrepareParams
from shrinkflow.decide.gates import GatesParams
from shrinkflow.decide.promotion import RegistryParams
from shrinkflow.decide.select import SelectParams
from shrinkflow.steps import base as steps
from shrinkflow.steps.convert import ConvertParams
from shrinkflow.steps.quantize import QuantizeStep
from shrinkflow.steps.train import TrainParams
from shrinkflow.steps.validate import ValidateParams
from shrinkflow.targets import base as targets
from shrinkflow.targets.onnxruntime import OnnxRuntimeParams


def _variant_step_configs() -> tuple[type[Section], ...]:
    """Configs of the step kinds a variant chain may use (those with a ``kind`` tag)."""
    return tuple(k.config for k in steps.kinds().values() if "kind" in k.config.model_fields)


VARIANT_STEPS = _variant_step_configs()
TargetSpec = Annotated[Union[targets.param_classes()], Field(discriminator="runtime")]  # noqa: UP007
STEP_KINDS = tuple(c.model_fields["kind"].default for c in VARIANT_STEPS)
Step = Annotated[Union[VARIANT_STEPS], Field(discriminator="kind")]  # noqa: UP007
VARIANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class BaseParams(Section):
    experiment: str = Field("shrinkflow", min_length=1, max_length=250)
    # MLFLOW_TRACKING_URI, when set, wins over this value (see tracking_uri()).
    tracking_uri: str = Field("sqlite:///mlflow.db", min_length=1)
    # Where a new experiment keeps its artifacts; relative paths are under the workspace.
    artifact_location: str = Field("mlartifacts", min_length=1)
    # After a run: record outputs in dvc.lock (dvc commit) and push them to the remote.
    dvc_commit: bool = True
    dvc_push: bool = True
    # Intra-op threads of every compute step; fixed (never derived from the load or the
    # worker count) so a step gives the same bytes however many run at once.
    torch_threads: Int = Field(1, ge=1, le=256)
    # Worker processes of the local Dask cluster: compute steps run at once.
    parallel_steps: Int = Field(2, ge=1, le=64)
    # An existing Dask scheduler (tcp://HOST:PORT) instead of a local cluster;
    # SHRINKFLOW_DASK_ADDRESS or --dask-address override it.
    dask_address: str | None = Field(None, pattern=r"^(tcp|tls|inproc|ucx)://\S+$")


class Variant(Section):
    """A named chain of steps applied to a parent model (the teacher or another variant)."""

    # Required, even for the teacher: dvc.yaml's compress stage reads it from params.yaml.
    from_: str = Field(alias="from")
    steps: list[Step] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _steps_as_single_key_maps(cls, raw: Any) -> Any:
        """Accept ``- prune: {amount: 0.8}`` (the params.yaml form) for each step."""
        if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
            return raw
        out = []
        for i, item in enumerate(raw["steps"]):
            if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
                (kind, body), = item.items()
                if kind not in STEP_KINDS:
                    raise ValueError(f"steps[{i}]: unknown step {kind!r} "
                                     f"(one of {', '.join(STEP_KINDS)})")
                if body is not None and not isinstance(body, dict):
                    raise ValueError(f"steps[{i}].{kind}: must be a mapping of options")
                item = {"kind": kind, **(body or {})}
            out.append(item)
        return {**raw, "steps": out}

    @model_validator(mode="after")
    def _onnx_only_last(self) -> Variant:
        for i, step in enumerate(self.steps[:-1]):
            if isinstance(step, QuantizeStep) and step.is_onnx_only:
                raise ValueError(f"steps[{i}]: quantize {step.method} acts on the ONNX file, "
                                 "so it must be the last step of a variant")
        qat = [i for i, s in enumerate(self.steps) if isinstance(s, QuantizeStep)
               and s.method == "qat"]
        if qat and any(s.kind in ("prune", "quantize") for s in self.steps[qat[0] + 1:]):
            raise ValueError(f"steps[{qat[0]}]: quantize qat must be the last torch step: "
                             "prune and quantize need a float model")
        return self

    @property
    def onnx_quantize(self) -> QuantizeStep | None:
        last = self.steps[-1]
        return last if isinstance(last, QuantizeStep) and last.is_onnx_only else None

    @property
    def torch_steps(self) -> list[Section]:
        """The steps that act on a checkpoint (ORT quantization acts on the ONNX file)."""
        return [s for s in self.steps if not (isinstance(s, QuantizeStep) and s.is_onnx_only)]


class Params(Section):
    base: BaseParams = Field(default_factory=BaseParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    train: TrainParams = Field(default_factory=TrainParams)
    variants: dict[str, Variant] = Field(default_factory=dict)
    # Deployment targets; ONNX Runtime is always one (its ONNX file is every model's
    # reference artifact). A name alone means the target's defaults.
    targets: list[TargetSpec] = Field(default_factory=lambda: [OnnxRuntimeParams()])
    convert: ConvertParams = Field(default_factory=ConvertParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    gates: GatesParams = Field(default_factory=GatesParams)
    select: SelectParams = Field(default_factory=SelectParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def registered_model_name(self) -> str:
        return self.registry.model_name or f"shrinkflow-{self.prepare.dataset}"

    @model_validator(mode="before")
    @classmethod
    def _targets_by_name(cls, raw: Any) -> Any:
        """``targets: [onnxruntime, openvino]`` means each target's defaults; ONNX Runtime
        is added first when missing."""
        if not isinstance(raw, dict) or "targets" not in raw:
            return raw
        items = raw["targets"]
        if not isinstance(items, list):
            return raw
        items = [{"runtime": t} if isinstance(t, str) else t for t in items]
        if not any(isinstance(t, dict) and t.get("runtime") == "onnxruntime" for t in items):
            items.insert(0, {"runtime": "onnxruntime"})
        return {**raw, "targets": items}

    @property
    def target_names(self) -> list[str]:
        return [t.runtime for t in self.targets]

    def target(self, name: str):
        return next(t for t in self.targets if t.runtime == name)

    def target_threads(self, name: str) -> int:
        return self.target(name).threads or self.validate_.threads

    @model_validator(mode="after")
    def _variant_graph(self) -> Params:
        for name, variant in self.variants.items():
            if not VARIANT_NAME.match(name) or name == "teacher":
                raise ValueError(f"variants.{name}: a name is lower-case letters, digits and _ "
                                 "(starting with a letter), and not 'teacher'")
            parent = variant.from_
            if parent != "teacher" and parent not in self.variants:
                raise ValueError(f"variants.{name}.from: unknown model {parent!r} (teacher or "
                                 "a variant name)")
            if parent in self.variants and self.variants[parent].onnx_quantize:
                raise ValueError(f"variants.{name}.from: {parent!r} ends in an ONNX Runtime "
                                 "quantize step; nothing can be derived from it")
        self.variant_order()  # raises on cycles
        names = self.target_names
        if len(names) != len(set(names)):
            raise ValueError(f"targets: each runtime at most once (got {', '.join(names)})")
        if self.validate_.max_rounds < self.validate_.rounds:
            raise ValueError("validate.max_rounds: must be >= validate.rounds")
        return self

    def variant_order(self) -> list[str]:
        """Variant names with every parent before its children."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ValueError(f"variants: cycle {' -> '.join((*path, name))}")
            state[name] = 1
            parent = self.variants[name].from_
            if parent in self.variants:
                visit(parent, (*path, name))
            state[name] = 2
            order.append(name)

        for name in self.variants:
            visit(name, ())
        return order

    @property
    def model_names(self) -> list[str]:
        return ["teacher", *self.variant_order()]

    def parent_of(self, name: str) -> str | None:
        return self.variants[name].from_ if name in self.variants else None

    def lineage_chain(self, name: str) -> list[str]:
        """teacher -> ... -> name."""
        chain = [name]
        while chain[0] != "teacher":
            chain.insert(0, self.variants[chain[0]].from_)
        return chain

    def dump(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (``validate``, not ``validate_``)."""
        return self.model_dump(mode="json", by_alias=True)

    def yaml(self) -> str:
        return yaml_dump(self.dump())


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI, when set, overrides ``base.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.base.tracking_uri


def dask_address(params: Params, override: str | None = None) -> str | None:
    """--dask-address, else SHRINKFLOW_DASK_ADDRESS, else ``base.dask_address``."""
    return override or os.environ.get("SHRINKFLOW_DASK_ADDRESS") or params.base.dask_address


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a mapping into :class:`Params`; the first problem becomes one clear error."""
    if not isinstance(raw, dict):
        raise ShrinkflowError(f"{source}: the top level must be a mapping of sections")
    return validate_section(Params, raw, source)


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load ``params.yaml`` (or defaults when ``path`` is None), apply overrides, validate."""
    raw = read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return parse_params(raw, source=str(path) if path is not None else "params")
