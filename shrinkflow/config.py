"""Typed model of ``params.yaml``, parsed and validated once, at the edge.

Every step reads only its own section, so ``dvc.yaml`` can list exactly the keys a
stage depends on and a Prefect cache key changes only when those keys do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shrinkflow.errors import ShrinkflowError


class Section(BaseModel):
    """A params section: unknown keys are refused, values are immutable after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """Short, stable hash of this section's values (tags, cache keys, lineage)."""
        return stable_hash(self.model_dump(mode="json"))


class BaseParams(Section):
    experiment: str = Field("shrinkflow", min_length=1)
    # MLFLOW_TRACKING_URI, when set, wins over this value (see tracking_uri()).
    tracking_uri: str = Field("sqlite:///mlflow.db", min_length=1)
    # Where a new experiment keeps its artifacts; relative paths are under the workspace.
    artifact_location: str = Field("mlartifacts", min_length=1)
    # After a run: record outputs in dvc.lock (dvc commit) and push them to the remote.
    dvc_commit: bool = True
    dvc_push: bool = True
    # Intra-op threads for training; fixed so results are repeatable on one machine.
    torch_threads: int = Field(2, ge=1, le=256)
    # Compute steps (train, compress steps, convert) of independent variants that run at
    # once; tasks waiting for their parent do not hold a slot.
    parallel_steps: int = Field(2, ge=1, le=64)


class PrepareParams(Section):
    dataset: Literal["digits", "fashion-mnist", "npz"] = "digits"
    # fashion-mnist: a directory holding the four idx(.gz) files (default: Debian's
    # dataset-fashion-mnist). npz: a file with arrays x and y.
    path: str | None = None
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    # Ignored by fashion-mnist, which keeps its official 10k test split.
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    # Keep at most this many training examples (stratified); None keeps all.
    max_train: int | None = Field(None, ge=10)
    seed: int = 0

    @model_validator(mode="after")
    def _path_needed(self) -> PrepareParams:
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs prepare.path: the .npz file with arrays x and y")
        return self


class ArchParams(Section):
    """A CNN: conv blocks (each a list of conv widths, 2x2 max-pool between blocks), then
    global average pooling or flattening, an optional hidden linear layer, the classifier.

    Global average pooling keeps the head small, so the parameters sit in the convs,
    where structured pruning and quantization act.
    """

    blocks: list[list[int]] = Field(default_factory=lambda: [[16, 16], [32, 32]], min_length=1)
    # gap: global average pool into the head (small head); flatten: every spatial
    # position feeds the head (many parameters, few FLOPs).
    head: Literal["gap", "flatten"] = "gap"
    hidden: int = Field(0, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    batchnorm: bool = True
    kernel_size: int = Field(3, ge=1, le=7)

    @model_validator(mode="after")
    def _widths_positive(self) -> ArchParams:
        for i, block in enumerate(self.blocks):
            if not block:
                raise ValueError(f"blocks[{i}] is empty: give at least one conv width")
            if any(w < 1 for w in block):
                raise ValueError(f"blocks[{i}]: conv widths must be >= 1")
        return self


class TrainParams(Section):
    model: ArchParams = Field(default_factory=ArchParams)
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    # Stop when validation accuracy has not improved for this many epochs.
    patience: int = Field(5, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Random crop/shift augmentation, in pixels (0 = off).
    augment_shift: int = Field(0, ge=0, le=8)
    seed: int = 42


class ConvertParams(Section):
    opset: int = Field(18, ge=13, le=23)
    # dynamo: torch.export-based exporter (the maintained one); legacy: TorchScript tracing.
    exporter: Literal["dynamo", "legacy"] = "dynamo"


class ValidateGates(Section):
    max_abs_diff: float = Field(1e-3, gt=0)
    min_top1_agreement: float = Field(0.999, ge=0, le=1)


class ValidateParams(Section):
    # Intra-op threads for ONNX Runtime latency (1 = the comparable, single-core number).
    threads: int = Field(1, ge=1, le=256)
    warmup: int = Field(5, ge=0)
    repeats_b1: int = Field(100, ge=3)
    repeats_b256: int = Field(20, ge=3)
    # Conversion parity of float models: ONNX Runtime against the same torch model.
    gates: ValidateGates = Field(default_factory=ValidateGates)
    # int8 models (ORT-quantized against their float torch model, or QAT): int8 rounding
    # is expected, a different prediction on more than a few examples is not.
    quantized_gates: ValidateGates = Field(
        default_factory=lambda: ValidateGates(max_abs_diff=3.0, min_top1_agreement=0.97))


# --- variants: chains of compression steps ------------------------------------------


class FitParams(Section):
    """Training knobs shared by every step that trains (fine-tune, distill, QAT, movement)."""

    epochs: int = Field(3, ge=1, le=10_000)
    lr: float = Field(5e-4, gt=0, le=10)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    augment_shift: int = Field(0, ge=0, le=8)
    seed: int = 7


class PruneStep(Section):
    """Unstructured (magnitude, random, movement) masks, or structured channel removal."""

    kind: Literal["prune"] = "prune"
    method: Literal["magnitude", "random", "movement", "structured"] = "magnitude"
    amount: float = Field(0.5, gt=0, lt=1)
    # global: one threshold over all layers; layer: the same fraction in every layer.
    scope: Literal["global", "layer"] = "global"
    # structured: L1 or L2 norm of a channel's weights ranks the channels.
    norm: Literal[1, 2] = 1
    # Iterative schedule: reach `amount` in this many prune -> fine-tune cycles.
    iterations: int = Field(1, ge=1, le=50)
    # Fine-tuning between iterations, and for movement the epochs that score weights.
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=1))
    seed: int = 0


class FinetuneStep(Section):
    """Train further, keeping pruned weights at exactly zero."""

    kind: Literal["finetune"] = "finetune"
    fit: FitParams = Field(default_factory=FitParams)


class QuantizeStep(Section):
    """int8: ONNX Runtime dynamic or static (QDQ, calibrated), or quantization-aware training."""

    kind: Literal["quantize"] = "quantize"
    method: Literal["dynamic", "static", "qat"] = "static"
    calibrator: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    # Calibration examples, drawn stratified from the validation split (never test).
    calibration_size: int = Field(512, ge=16)
    percentile: float = Field(99.999, gt=90, le=100)
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=2, lr=1e-4))

    @property
    def is_onnx_only(self) -> bool:
        """Dynamic and static act on the ONNX file: no torch step can follow them."""
        return self.method in ("dynamic", "static")


class DistillStep(Section):
    """Train a (smaller) student on the parent model's outputs."""

    kind: Literal["distill"] = "distill"
    student: ArchParams = Field(default_factory=lambda: ArchParams(blocks=[[8], [16]]))
    # hard: teacher's argmax as labels; soft: KL on T-softened logits (x T^2);
    # mixed: alpha * soft + (1 - alpha) * cross-entropy on the true labels.
    loss: Literal["hard", "soft", "mixed"] = "mixed"
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0, le=100)
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=20, lr=2e-3))


Step = Annotated[PruneStep | FinetuneStep | QuantizeStep | DistillStep,
                 Field(discriminator="kind")]
STEP_KINDS = ("prune", "finetune", "quantize", "distill")
VARIANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


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
        steps = []
        for i, item in enumerate(raw["steps"]):
            if isinstance(item, dict) and len(item) == 1 and "kind" not in item:
                (kind, body), = item.items()
                if kind not in STEP_KINDS:
                    raise ValueError(f"steps[{i}]: unknown step {kind!r} "
                                     f"(one of {', '.join(STEP_KINDS)})")
                item = {"kind": kind, **(body or {})}
            steps.append(item)
        return {**raw, "steps": steps}

    @model_validator(mode="after")
    def _onnx_only_last(self) -> Variant:
        for i, step in enumerate(self.steps[:-1]):
            if isinstance(step, QuantizeStep) and step.is_onnx_only:
                raise ValueError(f"steps[{i}]: quantize {step.method} acts on the ONNX file, "
                                 "so it must be the last step of a variant")
        return self

    @property
    def onnx_quantize(self) -> QuantizeStep | None:
        last = self.steps[-1]
        return last if isinstance(last, QuantizeStep) and last.is_onnx_only else None


class GatesParams(Section):
    """Hard gates every model must pass to be selected (conversion parity is checked by
    ``validate.gates`` / ``validate.quantized_gates`` and counts here too)."""

    # Accuracy (ONNX Runtime, test split) may be at most this many points below the teacher's.
    max_accuracy_drop_pp: float = Field(1.0, ge=0)
    # A variant must be faster than its parent by at least this fraction (0.05 = 5 %)...
    min_speedup_vs_parent: float = Field(0.05, ge=-1, lt=1)
    # ... at this batch size (p50 latency, validate.threads threads).
    latency_batch: Literal[1, 256] = 256
    # Largest ONNX file allowed, in bytes (None: no limit).
    max_size_bytes: int | None = Field(None, ge=1)


class SelectParams(Section):
    """Which passing model becomes the challenger (from the Pareto frontier)."""

    objective: Literal["smallest", "fastest", "most_accurate", "weighted"] = "smallest"
    # weighted: minimise w_size * size/teacher + w_latency * latency/teacher
    #           + w_accuracy * accuracy drop in pp.
    weights: dict[Literal["size", "latency", "accuracy"], float] = Field(
        default_factory=lambda: {"size": 1.0, "latency": 1.0, "accuracy": 1.0})


class RegistryParams(Section):
    # Registered model name; None: shrinkflow-<dataset>.
    model_name: str | None = Field(None, min_length=1)
    # After each run, register the selected model as `challenger` and try to promote it.
    auto_promote: bool = True
    # The challenger wins if it is at most this many points less accurate than the
    # champion (re-measured on the same test data) ...
    max_accuracy_loss_pp: float = Field(0.2, ge=0)
    # ... and better on the selection objective by at least this fraction.
    min_objective_gain: float = Field(0.0, ge=0, lt=1)


class Params(Section):
    base: BaseParams = Field(default_factory=BaseParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    train: TrainParams = Field(default_factory=TrainParams)
    variants: dict[str, Variant] = Field(default_factory=dict)
    convert: ConvertParams = Field(default_factory=ConvertParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    gates: GatesParams = Field(default_factory=GatesParams)
    select: SelectParams = Field(default_factory=SelectParams)
    registry: RegistryParams = Field(default_factory=RegistryParams)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def registered_model_name(self) -> str:
        return self.registry.model_name or f"shrinkflow-{self.prepare.dataset}"

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

    def dump(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (``validate``, not ``validate_``)."""
        return self.model_dump(mode="json", by_alias=True)


def stable_hash(value: Any) -> str:
    """sha256 of canonical JSON, first 16 hex digits: stable across runs and machines."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI, when set, overrides ``base.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.base.tracking_uri


# --- loading -----------------------------------------------------------------------

_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "too_short": "needs at least {min_length} item(s)",
    "string_too_short": "must not be empty",
    "missing": "missing (required)",
}


def _format_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if p != "validate_") or "<top level>"
    loc = loc.replace("validate_", "validate")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (check its spelling; see the shipped params.yaml for the keys)"
    if kind == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')} (got {err.get('input')!r})"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg if loc == "<top level>" else f"{loc}: {msg}"
    template = _MESSAGES.get(kind)
    msg = template.format(**ctx) if template else err["msg"]
    if "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{loc}: {msg}"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a mapping into :class:`Params`; the first problem becomes one clear error."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ShrinkflowError(f"{source}: the top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ShrinkflowError(f"{source}: {first}{more}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a raw mapping."""
    for item in overrides:
        if "=" not in item:
            raise ShrinkflowError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ShrinkflowError(f"--set {item!r}: empty key part in {key!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ShrinkflowError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ShrinkflowError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error names the file and line."""
    if not path.is_file():
        raise ShrinkflowError(f"{path}: params file not found (pass --params FILE)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ShrinkflowError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ShrinkflowError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load ``params.yaml`` (or defaults when ``path`` is None), apply overrides, validate."""
    raw = read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return parse_params(raw, source=str(path) if path is not None else "params")


def yaml_dump(raw: dict[str, Any]) -> str:
    """Params as YAML (key order kept), e.g. the effective params logged with a run."""
    return yaml.safe_dump(raw, sort_keys=False)
