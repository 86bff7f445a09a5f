"""The machine a result was computed or measured on.

Float kernels and int8 behaviour differ between CPU kinds (AVX2 without VNNI, AVX-512
with VNNI, AMX), so every latency, every lineage record and every reproduction names
the CPU model, the ISA features that change kernels, and the library versions.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from typing import Any

from shrinkflow.core.config import stable_hash

# The CPU flags that select different float / int8 kernels in oneDNN, MLAS and XNNPACK.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile",
                "amx_int8", "amx_bf16")


@functools.cache
def cpu() -> dict[str, Any]:
    """CPU model, kernel-relevant ISA flags and core count (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    present = [f for f in KERNEL_FLAGS if f in flags]
    return {"cpu_model": model, "isa": present, "cores": os.cpu_count() or 1,
            "isa_kind": isa_kind(present), "arch": platform.machine()}


def isa_kind(flags: list[str] | set[str]) -> str:
    """A short name for the kernel family: amx, avx512_vnni, avx512, avx2, or baseline."""
    flags = set(flags)
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx2" in flags:
        return "avx2"
    return "baseline"


def has_int8_dot_product() -> bool:
    """True when int8 convolutions accumulate u8 x s8 products without int16 saturation
    (VNNI or AMX). Without it ONNX Runtime sums pairs into int16 (VPMADDUBSW), and
    full-range 8-bit weights can saturate."""
    return cpu()["isa_kind"] in ("amx", "avx512_vnni", "avx_vnni")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def runtimes() -> dict[str, str]:
    """Versions of the numeric libraries whose kernels produce our numbers (looked up
    without importing them: cheap, and safe in any process)."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "openvino", "ai-edge-litert", "litert-torch", "numpy"):
        v = _version(dist)
        if v != "not installed":
            out[dist] = v
    return out


def torch_kernels() -> dict[str, str]:
    """oneDNN version and the CPU capability torch dispatches to (imports torch)."""
    import re

    import torch

    shown = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\d.]+)", shown)
    capability = re.search(r"CPU capability usage: (\S+)", shown)
    return {"onednn": onednn.group(1) if onednn else "unknown",
            "torch_cpu_capability": capability.group(1) if capability else "unknown"}


def fingerprint(threads: dict[str, int] | None = None) -> dict[str, Any]:
    """Everything that changes kernels or their timing: CPU, ISA, versions, threads."""
    out: dict[str, Any] = {**cpu(), **runtimes()}
    if threads:
        out["threads"] = dict(threads)
    out["id"] = stable_hash({k: v for k, v in out.items() if k != "id"})
    return out


def same_kernels(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two machines run the same kernels: same ISA features and library versions (the
    CPU model name and core count may differ)."""
    keys = ("isa", "arch", "torch", "onnxruntime", "openvino", "ai-edge-litert")
    return all(a.get(k) == b.get(k) for k in keys)


def describe(m: dict[str, Any]) -> str:
    """One line: 'AMD EPYC (avx512_vnni, 2 cores), onnxruntime 1.32.0, 1 thread'."""
    parts = [f"{m.get('cpu_model', '?')} ({m.get('isa_kind', '?')}, {m.get('cores', '?')} cores)"]
    if m.get("onnxruntime"):
        parts.append(f"onnxruntime {m['onnxruntime']}")
    if m.get("threads"):
        parts.append(", ".join(f"{k} {v}" for k, v in m["threads"].items()))
    return ", ".join(parts)
