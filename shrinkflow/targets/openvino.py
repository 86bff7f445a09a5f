"""OpenVINO, CPU: the ONNX file of the same model (float, or ONNX Runtime's QDQ int8,
which OpenVINO's CPU plugin runs with int8 kernels) -> OpenVINO IR (model.xml +
model.bin), compiled for CPU with fixed threads and f32 precision.

Measured choices (see README): int8 comes from the QDQ graph shrinkflow already makes
rather than NNCF's post-training quantization (as fast here, and more faithful with
default settings), so one int8 variant keeps one lineage across runtimes.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from shrinkflow.targets.base import Runner, Target, TargetParams, model_file

XML = "model.xml"
_AUTO_NAME = re.compile(r"^[A-Za-z]+_\d+$")  # e.g. Constant_2513: a process-global counter


class OpenVinoParams(TargetParams):
    """OpenVINO on CPU."""

    runtime: Literal["openvino"] = "openvino"
    # f32: never let the CPU plugin run an fp32 model in bf16 (its default on CPUs with
    # AVX512_BF16 or AMX changes the logits by ~3e-2).
    precision: Literal["f32"] = "f32"


def disable_telemetry() -> None:
    """OpenVINO's converter sends usage telemetry unless the user's consent file says
    "0" (DO_NOT_TRACK is ignored; its opt-out command would itself send an event)."""
    path = Path.home() / "intel" / "openvino_telemetry"
    try:
        if not path.is_file() or path.read_text().strip() != "0":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("0")
    except OSError:
        import os

        os.environ.setdefault("CI", "true")  # the other switch it honours


def _canonical_names(model) -> None:
    """Friendly names that do not depend on how many models this process built before
    (else the same ONNX file gives different .xml bytes)."""
    for i, op in enumerate(model.get_ordered_ops()):
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        if _AUTO_NAME.match(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_auto{i}")


class OpenVino(Target):
    name: ClassVar[str] = "openvino"
    params: ClassVar[type[TargetParams]] = OpenVinoParams
    extra: ClassVar[str | None] = "openvino"
    modules: ClassVar[tuple[str, ...]] = ("openvino",)
    source: ClassVar[str] = "onnx"
    format: ClassVar[str] = "openvino-ir"

    @classmethod
    def convert(cls, out_dir: Path, *, module=None, input_shape=(), onnx_path=None, int8=False,
                calibration=None, options=None) -> Path:
        disable_telemetry()
        import openvino as ov

        model = ov.convert_model(str(onnx_path))  # a QDQ file becomes an int8 IR
        _canonical_names(model)
        out = Path(out_dir) / "model"
        out.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(out / XML), compress_to_fp16=False)  # keep fp32 weights
        return out

    @classmethod
    def load(cls, path: str, threads: int) -> Runner:
        disable_telemetry()
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        config = {props.inference_num_threads: threads,
                  hints.performance_mode: hints.PerformanceMode.LATENCY,
                  props.num_streams: 1, hints.inference_precision: ov.Type.f32,
                  hints.enable_hyper_threading: False}
        compiled = core.compile_model(core.read_model(str(model_file(path, ".xml"))), "CPU",
                                      config)
        request, lock = compiled.create_infer_request(), threading.Lock()

        def run(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            with lock:
                request.set_input_tensor(ov.Tensor(x, shared_memory=True))
                request.infer()
                # The output buffer is reused by the next call: copy it out.
                return np.array(request.get_output_tensor().data, dtype=np.float32, copy=True)

        return run

    @classmethod
    def versions(cls) -> dict[str, str]:
        from importlib import metadata

        return {"openvino": metadata.version("openvino")}


def runs_int8(path: str | Path) -> bool:
    """Whether the CPU plugin executes an IR's convolutions / matmuls in int8."""
    disable_telemetry()
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model_file(path, ".xml"))), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul") and \
                info["runtimePrecision"].astype(str) in ("i8", "u8"):
            return True
    return False


def nncf_default_int8(onnx_path: str | Path, out_dir: Path, calibration: np.ndarray) -> Path:
    """OpenVINO's own post-training int8 with NNCF's defaults (the benchmark's peer)."""
    disable_telemetry()
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    items = [np.ascontiguousarray(calibration[i:i + 1], dtype=np.float32)
             for i in range(len(calibration))]
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    _canonical_names(quantized)
    out = Path(out_dir) / "model"
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / XML), compress_to_fp16=False)
    return out
