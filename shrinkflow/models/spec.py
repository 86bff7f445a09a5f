"""Which network a step builds: the built-in CNN (the default), a built-in MLP (for
feature vectors, e.g. CSV data), or any ``torch.nn.Module`` classifier a factory in the
workspace returns (``factory: "package.module:function"`` with ``kwargs``).

A factory is called as ``function(input_shape=(C, H, W) or (F,), num_classes=K,
**kwargs)``; its module is imported with the workspace root first on ``sys.path``. The
sha256 of the factory's source file is part of the cache keys (plan) and stored in every
checkpoint made from it, so editing the file retrains what depends on it.

A checkpoint stores the spec as its ``arch``; a factory model is rebuilt by
factory + kwargs, reshaped to the stored weights (structured pruning removes channels),
then ``load_state_dict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Discriminator, Field, Tag, TypeAdapter
from torch import nn

from shrinkflow.core.config import Int, Section
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.models.cnn import ArchParams, Dropout
from shrinkflow.models.cnn import build_model as build_cnn

FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class MLPParams(Section):
    """A multilayer perceptron: flatten, hidden linear layers with ReLU, the classifier.
    The built-in teacher for feature vectors (CSV); QAT, pruning and distillation all
    know every layer of it."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[Int] = Field(default_factory=lambda: [128, 64], min_length=1)
    dropout: float = Field(0.1, ge=0, lt=1)

    def check_input(self, input_shape: tuple[int, ...], where: str) -> None:
        return None


class FactorySpec(Section):
    """Your own classifier: ``factory: "package.module:function"`` returning an
    ``nn.Module`` that maps a batch of inputs to (N, num_classes) logits."""

    factory: str = Field(pattern=FACTORY.pattern)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def check_input(self, input_shape: tuple[int, ...], where: str) -> None:
        return None  # checked by building it (preflight)

    @property
    def module_name(self) -> str:
        return self.factory.split(":", 1)[0]


def _kind(raw: Any) -> str:
    # Tags start with "tagged" so error locations leave them out (core.config).
    if isinstance(raw, dict):
        if "factory" in raw:
            return "tagged-factory"
        return "tagged-mlp" if raw.get("kind") == "mlp" else "tagged-cnn"
    if isinstance(raw, FactorySpec):
        return "tagged-factory"
    return "tagged-mlp" if isinstance(raw, MLPParams) else "tagged-cnn"


ModelSpec = Annotated[
    Union[Annotated[ArchParams, Tag("tagged-cnn")],  # noqa: UP007
          Annotated[MLPParams, Tag("tagged-mlp")],
          Annotated[FactorySpec, Tag("tagged-factory")]],
    Discriminator(_kind)]
_ADAPTER: TypeAdapter = TypeAdapter(ModelSpec)


def parse_spec(raw: Any) -> ArchParams | MLPParams | FactorySpec:
    """A checkpoint's stored ``arch`` (or a params mapping) as its spec."""
    return _ADAPTER.validate_python(raw)


# -- workspace imports -------------------------------------------------------------------

def add_import_root(root: str | Path) -> None:
    """Put a workspace root first on ``sys.path`` (factories are imported from it)."""
    path = str(Path(root).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
        importlib.invalidate_caches()


def factory_file(spec: FactorySpec) -> Path:
    """The source file of the factory's module (found, not imported)."""
    try:
        found = importlib.util.find_spec(spec.module_name)
    except (ImportError, ValueError) as exc:
        found, why = None, str(exc)
    else:
        why = "not found on the workspace path"
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ShrinkflowError(f"model factory {spec.factory}: module {spec.module_name!r} "
                              f"{why}; put it under the workspace root (e.g. "
                              f"{spec.module_name.replace('.', '/')}.py)")
    return Path(found.origin)


def factory_sha256(spec: FactorySpec) -> str:
    """sha256 of the factory's source file: part of every cache key built from it."""
    return file_sha256(factory_file(spec))


def _factory_callable(spec: FactorySpec):
    module_name, func = spec.factory.split(":", 1)
    factory_file(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ShrinkflowError(f"model factory {spec.factory}: importing {module_name} failed "
                              f"({type(exc).__name__}: {exc})") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ShrinkflowError(f"model factory {spec.factory}: {module_name} has no function "
                              f"{func!r}")
    return fn


# -- building ----------------------------------------------------------------------------

class MLP(nn.Sequential):
    """Flatten -> (Linear -> ReLU) per hidden width -> (Dropout) -> Linear."""

    def __init__(self, spec: MLPParams, input_shape: tuple[int, ...], num_classes: int):
        width = 1
        for d in input_shape:
            width *= int(d)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        if spec.dropout:
            layers.append(Dropout(spec.dropout))
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def _build(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if isinstance(spec, ArchParams):
        return build_cnn(spec, input_shape, num_classes)
    if isinstance(spec, MLPParams):
        return MLP(spec, input_shape, num_classes)
    fn = _factory_callable(spec)
    try:
        model = fn(input_shape=tuple(int(d) for d in input_shape), num_classes=int(num_classes),
                   **spec.kwargs)
    except Exception as exc:
        raise ShrinkflowError(f"model factory {spec.factory}: calling it failed "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(model, nn.Module):
        raise ShrinkflowError(f"model factory {spec.factory}: returned "
                              f"{type(model).__name__}, not a torch.nn.Module")
    return model


def build(spec, input_shape: tuple[int, ...], num_classes: int,
          seed: int | None = None) -> nn.Module:
    """Build the model of ``spec``; ``seed`` makes its initial weights reproducible
    without disturbing the global random generator."""
    if seed is None:
        return _build(spec, input_shape, num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _build(spec, input_shape, num_classes)


def spec_info(spec) -> dict[str, Any]:
    """What a checkpoint stores about the code that built it (the factory's sha256)."""
    if isinstance(spec, FactorySpec):
        return {"factory_sha256": factory_sha256(spec)}
    return {}


def check_built(spec, input_shape: tuple[int, ...], num_classes: int, where: str) -> nn.Module:
    """Build ``spec`` and run one example: logits of shape (1, num_classes), else one line."""
    model = build(spec, input_shape, num_classes, seed=0).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape)))
    except Exception as exc:
        raise ShrinkflowError(f"{where}: the model fails on inputs of shape "
                              f"{tuple(input_shape)} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ShrinkflowError(f"{where}: the model must return logits of shape (N, "
                              f"{num_classes}); it returned {shape}")
    return model


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The layer whose output is the logits (its outputs, the classes, are never
    pruned): the last conv or linear layer to run on an example."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ShrinkflowError("the model has no conv or linear layer to classify with")
    return order[-1]



# -- structured pruning leaves other shapes than the factory builds --------------------

_SHAPE_ATTRS = {
    nn.Conv1d: lambda m, w: _conv_attrs(m, w), nn.Conv2d: lambda m, w: _conv_attrs(m, w),
    nn.Linear: lambda m, w: (setattr(m, "out_features", w.shape[0]),
                             setattr(m, "in_features", w.shape[1])),
}


def _conv_attrs(m: nn.Module, w: torch.Tensor) -> None:
    m.out_channels = w.shape[0]
    m.in_channels = w.shape[1] * m.groups


def reshape_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each parameter and buffer of ``model`` the shape it has in ``state`` (after
    structured pruning), fixing the layer attributes torch reads (channels, features)."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        mod_name, _, attr = key.rpartition(".")
        module = modules.get(mod_name)
        if module is None:
            continue
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor) or current.shape == value.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, attr, nn.Parameter(torch.empty_like(value, dtype=current.dtype),
                                               requires_grad=current.requires_grad))
        else:
            module.register_buffer(attr, torch.empty_like(value, dtype=current.dtype))
        if attr == "weight":
            for cls, fix in _SHAPE_ATTRS.items():
                if type(module) is cls:
                    fix(module, value)
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.num_features = value.shape[0]
        if isinstance(module, nn.LayerNorm) and attr == "weight":
            module.normalized_shape = tuple(value.shape)
        if isinstance(module, nn.GroupNorm) and attr == "weight":
            module.num_channels = value.shape[0]
