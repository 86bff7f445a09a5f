"""Every check that can run before a server starts: params (already validated), the
data source and its shapes and labels, architectures against the input size, the
tracking store, the workspace. Each problem is one line, in well under five seconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.workspace import Workspace
from shrinkflow.data import sources
from shrinkflow.data.validation import check_labels, check_npz_sizes, read_npz
from shrinkflow.ops.tracking import check_reachable, resolve_tracking_uri
from shrinkflow.plan.params import Params, tracking_uri


def input_shape(params: Params, root: Path) -> tuple[int, ...] | None:
    """The (C, H, W) of the configured data, read cheaply (headers, not pixels)."""
    prep = params.prepare.resolved(root)
    if prep.dataset == "text":  # sentences, not images: no architecture to check
        from shrinkflow.data.text import check_source

        check_source(prep)
        return None
    if prep.dataset == "digits":
        return (1, 8, 8)
    if prep.dataset == "fashion-mnist":
        sources.source_files(prep)  # raises one line if the files are missing
        return (1, 28, 28)
    if prep.dataset in ("imagefolder", "csv"):
        return tuple(_load(prep).x.shape[1:])  # validates every file, one line
    path = Path(prep.path or "")
    if not path.is_file():
        raise ShrinkflowError(f"prepare.path: {path} not found; give an .npz file with arrays "
                              "x (N,H,W or N,C,H,W) and y (N,)")
    shape, _ = check_npz_sizes(path, ("x", "y"))["x"]
    if len(shape) == 3:
        return (1, *shape[1:])
    if len(shape) == 2:  # feature vectors
        return (shape[1],)
    return tuple(shape[1:]) if len(shape) == 4 else None


def check_data(params: Params, root: Path) -> tuple[int, ...] | None:
    shape = input_shape(params, root)
    prep = params.prepare.resolved(root)
    if prep.dataset in ("npz", "imagefolder", "csv"):
        # Finite values, labels 0..K-1, every class present.
        y = read_npz(prep.path)["y"] if prep.dataset == "npz" else _load(prep).y
        counts = np.bincount(y.astype(np.int64))
        if counts.min() < 3:
            raise ShrinkflowError(f"{prep.path}: class {int(counts.argmin())} has "
                                  f"{int(counts.min())} example(s); each class needs >= 3")
        check_labels(y, str(prep.path))
        if len(shape) == 1 and params.train.augment_shift:
            raise ShrinkflowError("train.augment_shift: shifts images; feature vectors "
                                  f"({prep.dataset}) need 0")
        if len(shape) == 1 and params.train.augment_flip:
            raise ShrinkflowError("train.augment_flip: mirrors images; feature vectors "
                                  f"({prep.dataset}) need false")
    return shape


def check_architectures(params: Params, shape: tuple[int, ...] | None,
                        num_classes: int = 10, root: Path | None = None) -> None:
    if shape is None:
        return
    try:
        params.train.model.check_input(shape, "train.model")
        for name, variant in params.variants.items():
            for i, step in enumerate(variant.steps):
                student = getattr(step, "student", None)
                if student is not None:
                    student.check_input(shape, f"variants.{name}.steps[{i}].distill.student")
    except ValueError as exc:
        raise ShrinkflowError(str(exc)) from None
    check_support(params, shape, num_classes, root)


def check_support(params: Params, shape: tuple[int, ...], num_classes: int = 10,
                  root: Path | None = None) -> None:
    """Build every architecture once (a factory must import, build and return one logit
    per class) and ask each compression step whether it supports the model it gets: a
    refusal is one line naming the variant, the step and the layer, before any compute."""
    from shrinkflow.models.spec import ArchParams, check_built
    from shrinkflow.steps.support import refusal

    source = _transfer_source(params, root, shape, num_classes) if root is not None else None
    if len(shape) != 3:
        specs = [("train.model", params.train.model)] * (source is None) + [
            (f"variants.{n}.steps[{i}].distill.student", s.student)
            for n, v in params.variants.items() for i, s in enumerate(v.steps)
            if getattr(s, "student", None) is not None]
        for where, spec in specs:
            if isinstance(spec, ArchParams):
                raise ShrinkflowError(f"{where}: the CNN needs images (C,H,W) but this data "
                                      f"gives feature vectors of shape {shape}; use "
                                      "{kind: mlp} or a factory")
    built: dict[str, tuple[object, object]] = {
        "teacher": (params.train.model, source if source is not None else
                    check_built(params.train.model, shape, num_classes, "train.model"))}
    if source is None and params.train.freeze:
        from shrinkflow.steps.transfer import freeze

        freeze(built["teacher"][1], list(params.train.freeze))  # names every prefix
    for name in params.variant_order():
        variant = params.variants[name]
        spec, model = built[variant.from_]
        for i, step in enumerate(variant.steps):
            where = f"variants.{name}.steps[{i}]"
            student = getattr(step, "student", None)
            if student is not None:
                spec, model = student, check_built(student, shape, num_classes,
                                                   f"{where}.distill.student")
                continue
            why = refusal(step, model, shape, num_classes)
            if why:
                raise ShrinkflowError(f"{where}: {why}")
        built[name] = (spec, model)


def _transfer_source(params: Params, root: Path, shape: tuple[int, ...],
                     num_classes: int):
    """The model ``train.init_from`` names (fetched, checked against the data and
    ``train.freeze``), as the teacher will start: None without init_from."""
    if not params.train.init_from:
        return None
    import torch

    from shrinkflow.models.checkpoint import load_checkpoint
    from shrinkflow.plan.plan import resolve_init
    from shrinkflow.steps.transfer import freeze, replace_head

    train, _ = resolve_init(params, root)
    model, ckpt = load_checkpoint(train.init_checkpoint)
    where = f"train.init_from {params.train.init_from}"
    if ckpt.get("qat"):
        raise ShrinkflowError(f"{where}: a quantization-aware model; transfer from a float one")
    src = tuple(ckpt["input_shape"])
    if len(src) != len(shape) or src[0] != shape[0]:
        raise ShrinkflowError(f"{where}: the model takes inputs {src}, the data has {shape}")
    if int(ckpt["num_classes"]) != num_classes:
        replace_head(model, num_classes, shape, seed=0)
    try:
        with torch.no_grad():
            model(torch.zeros((2, *shape)))
    except Exception as exc:
        raise ShrinkflowError(f"{where}: the model fails on inputs of shape {shape} "
                              f"({type(exc).__name__})") from None
    freeze(model, list(params.train.freeze))
    return model.eval()


def _num_classes(params: Params, root: Path) -> int:
    """K of the configured data (10 for the built-in sets; read from the labels else)."""
    prep = params.prepare.resolved(root)
    if prep.dataset in ("digits", "fashion-mnist"):
        return 10
    if prep.dataset == "npz":
        return sources.num_classes(prep)
    return int(_load(prep).y.max()) + 1


_LOADED: dict[str, sources.RawDataset] = {}


def _load(prep) -> sources.RawDataset:
    """A directory of images or a CSV, read and validated once per check."""
    key = prep.model_dump_json()
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = sources.load(prep)
    return _LOADED[key]


def check_targets(params: Params) -> None:
    """Every target's runtime is installed (else one line naming the extra)."""
    from shrinkflow.targets import base as targets

    for name in params.target_names:
        targets.get(name).check_available()


def check_workspace(ws: Workspace) -> None:
    if not ws.root.is_dir():
        raise ShrinkflowError(f"workspace {ws.root}: not a directory")
    if not os.access(ws.root, os.W_OK):
        raise ShrinkflowError(f"workspace {ws.root}: not writable")


def preflight(params: Params, ws: Workspace) -> str:
    """Run every check; return the resolved tracking URI."""
    _LOADED.clear()
    check_workspace(ws)
    check_targets(params)
    uri = resolve_tracking_uri(tracking_uri(params), ws.root)
    shape = check_data(params, ws.root)
    from shrinkflow.models.spec import add_import_root

    add_import_root(ws.root)  # model factories are imported from the workspace
    check_architectures(params, shape, _num_classes(params, ws.root), ws.root)
    check_reachable(uri)
    return uri
