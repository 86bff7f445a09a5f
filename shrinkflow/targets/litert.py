"""LiteRT (TFLite): the torch model (preprocessing inside) -> a ``.tflite`` flatbuffer
with litert-torch, run with ``ai_edge_litert``'s interpreter.

litert-torch cannot convert a dynamic batch, and a converted batch cannot be resized, so
one file holds one signature per batch size (``b1``, ``b16``, ``b256``; the weights are
stored once) and the runner splits any batch over them, largest first. int8 is
litert-torch's PT2E static quantization (per-channel int8 weights, int8 activations),
calibrated on raw inputs; its int8 output is dequantized by the runner.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from shrinkflow.core.config import Int
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.targets.base import Runner, Target, TargetParams, model_file

TFLITE = "model.tflite"


class LiteRtParams(TargetParams):
    """LiteRT (TFLite) with the ai-edge-litert interpreter."""

    runtime: Literal["litert"] = "litert"
    # Batch sizes compiled into the file (a batch of another size is split over them).
    batch_sizes: list[Int] = Field(default_factory=lambda: [1, 16, 256], min_length=1)


@contextlib.contextmanager
def _quiet():
    """The converter's progress lines, JAX lowering notes and C++ logs stay off the
    console (they are not errors: a failure raises)."""
    import io
    import logging
    import warnings

    for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GLOG_minloglevel", "3"),
                       ("LITERT_TORCH_SHOW_PROGRESS", "n")):
        os.environ.setdefault(key, value)
    loggers = [logging.getLogger(n) for n in ("litert_torch", "jax", "absl", "torchao", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers[:-1]:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _signatures(module, input_shape: tuple[int, ...], batch_sizes, **kwargs):
    import torch

    with _quiet():
        import litert_torch

        converter = litert_torch.Converter()
        for b in sorted(set(batch_sizes)):
            converter.signature(f"b{b}", module, (torch.zeros((b, *input_shape)),))
        return converter.convert(**kwargs)


def _standard_tensor(a: np.ndarray):
    """A float32 tensor with default strides: numpy keeps odd strides on size-1 axes, and
    torch would then read an (N, 1, H, W) batch as channels_last and run other kernels
    (the calibration ranges, so the file's bytes, would change in the last ulp)."""
    import torch

    out = torch.empty(a.shape, dtype=torch.float32)
    out.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))
    return out


def _int8(module, input_shape, batch_sizes, calibration: np.ndarray, calib_batch: int = 32,
          per_channel: bool = True):
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    example = torch.zeros((2, *input_shape))
    graph = torch.export.export(module, (example,),
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), calib_batch):
            graph(_standard_tensor(calibration[i:i + calib_batch]))
    graph = convert_pt2e(graph, fold_quantize=False)
    allow_exported_model_train_eval(graph)
    graph.eval()
    # quant_config lowers the Q/DQ pairs to int8 kernels (else float kernels stay).
    return _signatures(graph, input_shape, batch_sizes,
                       quant_config=QuantConfig(pt2e_quantizer=quantizer))


class LiteRt(Target):
    name: ClassVar[str] = "litert"
    params: ClassVar[type[TargetParams]] = LiteRtParams
    extra: ClassVar[str | None] = "litert"
    modules: ClassVar[tuple[str, ...]] = ("litert_torch", "ai_edge_litert")
    source: ClassVar[str] = "torch"
    format: ClassVar[str] = "tflite"

    @classmethod
    def convert(cls, out_dir: Path, *, module=None, input_shape=(), onnx_path=None, int8=False,
                calibration=None, options=None) -> Path:
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
        batch_sizes = options.batch_sizes if isinstance(options, LiteRtParams) else [1, 16, 256]
        if 1 not in batch_sizes:
            batch_sizes = [1, *batch_sizes]  # any batch must be expressible
        module.eval()
        if int8:
            if calibration is None:
                raise ShrinkflowError("convert litert int8: no calibration data")
            edge = _int8(module, tuple(input_shape), batch_sizes, calibration)
        else:
            edge = _signatures(module, tuple(input_shape), batch_sizes)
        out = Path(out_dir) / "model"
        out.mkdir(parents=True, exist_ok=True)
        (out / TFLITE).write_bytes(edge.model_content())
        return out

    @classmethod
    def load(cls, path: str, threads: int) -> Runner:
        from ai_edge_litert.interpreter import Interpreter

        file = model_file(path, ".tflite")
        interpreter = Interpreter(model_path=str(file), num_threads=threads)
        runners = sorted((_Signature(interpreter, name)
                          for name in interpreter.get_signature_list()), key=lambda r: -r.batch)
        if runners[-1].batch != 1:
            raise ShrinkflowError(f"{file}: needs a batch-1 signature to run any batch size")
        lock = threading.Lock()

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            outs, i = [], 0
            with lock:
                for r in runners:
                    while len(x) - i >= r.batch:
                        outs.append(r(x[i:i + r.batch]))
                        i += r.batch
            return np.concatenate(outs) if len(outs) > 1 else outs[0]

        return run

    @classmethod
    def versions(cls) -> dict[str, str]:
        from importlib import metadata

        return {"ai-edge-litert": metadata.version("ai-edge-litert"),
                "litert-torch": metadata.version("litert-torch")}


class _Signature:
    """One batch size's signature; (de)quantizes int8 inputs and outputs."""

    def __init__(self, interpreter, name: str):
        self.runner = interpreter.get_signature_runner(name)
        details = interpreter.get_signature_list()[name]
        self.in_name, self.out_name = details["inputs"][0], details["outputs"][0]
        self.inp = self.runner.get_input_details()[self.in_name]
        self.out = self.runner.get_output_details()[self.out_name]
        self.batch = int(self.inp["shape"][0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.inp["dtype"] != np.float32:
            scale, zp = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(self.inp["dtype"])
        y = self.runner(**{self.in_name: x})[self.out_name]
        if self.out["dtype"] != np.float32:
            scale, zp = self.out["quantization"]
            return (y.astype(np.float32) - np.float32(zp)) * np.float32(scale)
        return np.array(y, dtype=np.float32, copy=True)


def default_int8(module, input_shape: tuple[int, ...], out_dir: Path, calibration: np.ndarray,
                 batch_sizes=(1, 256)) -> Path:
    """litert-torch's default PT2E static int8 (per-tensor symmetric): the benchmark's peer."""
    edge = _int8(module.eval(), tuple(input_shape), batch_sizes, calibration, per_channel=False)
    out = Path(out_dir) / "model"
    out.mkdir(parents=True, exist_ok=True)
    (out / TFLITE).write_bytes(edge.model_content())
    return out
