"""Audit a registered model: its derivation chain from the lineage records, hash
verification of every artifact, reverse queries, and reproduction."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shrinkflow.artifacts import file_sha256
from shrinkflow.errors import ShrinkflowError
from shrinkflow.lineage import ARTIFACT
from shrinkflow.tracking import TAG, client


class Check(BaseModel):
    item: str
    status: str  # OK | MISMATCH | MISSING | INFO
    detail: str


# --- resolve and load ----------------------------------------------------------------------


def resolve(uri: str, target: str) -> tuple[dict[str, Any] | None, str]:
    """``models:/name@alias``, ``models:/name/version`` or a run id -> (version, run id)."""
    c = client(uri)
    if target.startswith("models:/"):
        ref = target[len("models:/"):]
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                mv = c.get_model_version_by_alias(name, alias)
            else:
                name, version = ref.rsplit("/", 1)
                mv = c.get_model_version(name, version)
        except Exception:
            raise ShrinkflowError(f"{target}: no such registered version at {uri} (see "
                                  "`shrinkflow models`)") from None
        rm = c.get_registered_model(mv.name)
        aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version))
        version = {"name": mv.name, "version": str(mv.version), "aliases": aliases,
                   "events": json.loads(mv.tags.get(f"{TAG}events", "[]")),
                   "tags": dict(mv.tags)}
        run_id = mv.tags.get(f"{TAG}model_run_id") or mv.run_id
        return version, run_id
    try:
        c.get_run(target)
    except Exception:
        raise ShrinkflowError(f"{target}: not models:/NAME@ALIAS, models:/NAME/VERSION or "
                              f"a run id at {uri}") from None
    return None, target


def load_lineage(uri: str, run_id: str) -> dict[str, Any]:
    import mlflow

    client(uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{ARTIFACT}")
    except Exception:
        raise ShrinkflowError(f"run {run_id}: no {ARTIFACT} (not a shrinkflow model run, or "
                              "its artifacts are gone)") from None
    return json.loads(text)


def chain(uri: str, run_id: str) -> list[dict[str, Any]]:
    """The lineage records from this model up to the teacher."""
    records = [load_lineage(uri, run_id)]
    while records[-1].get("parent"):
        records.append(load_lineage(uri, records[-1]["parent"]["run_id"]))
    return records


def audit(uri: str, target: str) -> dict[str, Any]:
    version, run_id = resolve(uri, target)
    records = chain(uri, run_id)
    c = client(uri)
    for r in records:
        run = c.get_run(r["run_id"])
        r["metrics"] = {k: v for k, v in run.data.metrics.items()}
    return {"target": target, "tracking_uri": uri, "registered": version, "models": records}


# --- present ---------------------------------------------------------------------------------


def render_tree(report: dict[str, Any]):
    from rich.tree import Tree

    v = report["registered"]
    models = report["models"]
    if v:
        root = Tree(f"[bold]{v['name']} v{v['version']}[/] aliases: "
                    f"{', '.join(v['aliases']) or '-'}")
        for e in v["events"]:
            root.add(f"{e['at']} {e['action']} by {e['by']} ({e['user']}): {e['reason']}")
        node = root.add(f"variant run {models[0]['run_id']} ({models[0]['model']['name']})")
    else:
        root = Tree(f"[bold]run {models[0]['run_id']}[/] ({models[0]['model']['name']})")
        node = root
    for i, r in enumerate(models):
        m = r["model"]
        label = node if i == 0 else node.add(f"parent: [bold]{m['name']}[/] run {r['run_id']}")
        label.add(f"ONNX sha256 {m['onnx']['sha256'][:16]}… (MLflow copy "
                  f"{(m['onnx'].get('mlflow_sha256') or '')[:16]}…), quantization "
                  f"{m['quantization']}" + (f", calibration subset "
                                            f"{m['calibration_fingerprint'][:16]}…"
                                            if m.get("calibration_fingerprint") else ""))
        acc = r.get("metrics", {}).get("onnx_test_accuracy")
        if acc is not None:
            label.add(f"metrics: ORT accuracy {acc * 100:.2f} %, size "
                      f"{r['metrics'].get('size_bytes', 0) / 1000:.1f} KB")
        steps = label.add("steps")
        own = r["chain"][len(models[i + 1]["chain"]) - 1:] if i + 1 < len(models) else r["chain"]
        for s in own:
            h = s.get("checkpoint_sha256") or s.get("onnx_sha256") or \
                s.get("calibration_fingerprint") or ""
            secs = f", {s['seconds']:.1f} s" if s.get("seconds") is not None else ""
            steps.add(f"{s['step']}: config {s['config_hash']}{secs}, output "
                      f"{h[:16]}… {json.dumps(s['config'], sort_keys=True)[:160]}")
        node = label
    teacher = models[-1]
    d = teacher["data"]
    data = node.add(f"data: {d['dataset']}, fingerprint {d['fingerprint'][:16]}…, split seed "
                    f"{d['split_seed']}, counts {d['counts']}")
    data.add(f"DVC: {d['dvc']['path']} md5 {d['dvc']['md5']}" if d.get("dvc")
             else "DVC: not recorded (run was not committed to dvc.lock)")
    data.add(f"source fingerprint {d['source_fingerprint'][:16]}…"
             + (f" ({d['source']})" if d.get("source") else ""))
    code = models[0]["code"]
    node.add(f"code: git {code['git_commit']} (dirty: {code['git_dirty']}), source hash "
             f"{code['code_hash']}")
    env = models[0]["environment"]
    node.add("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()
                                         if k not in ("platform",)))
    return root


def mermaid(report: dict[str, Any]) -> str:
    lines = ["graph TD"]
    models = report["models"]
    v = report["registered"]
    if v:
        lines.append(f'  REG["{v["name"]} v{v["version"]}<br/>{", ".join(v["aliases"])}"]')
        lines.append("  REG --> M0")
    for i, r in enumerate(models):
        steps = " → ".join(s["step"] for s in r["chain"][len(models[i + 1]["chain"]) - 1:]) \
            if i + 1 < len(models) else " → ".join(s["step"] for s in r["chain"])
        lines.append(f'  M{i}["{r["model"]["name"]}<br/>{steps}<br/>'
                     f'onnx {r["model"]["onnx"]["sha256"][:12]}"]')
        if i + 1 < len(models):
            lines.append(f"  M{i + 1} --> M{i}")
    d = models[-1]["data"]
    n = len(models) - 1
    lines.append(f'  D["data {d["dataset"]}<br/>{d["fingerprint"][:12]}"] --> M{n}')
    c = models[0]["code"]
    lines.append(f'  C["code {c["git_commit"][:10]}<br/>dirty {c["git_dirty"]}"] -.-> M0')
    return "\n".join(lines) + "\n"


def graph_png(report: dict[str, Any], path: str | Path) -> None:
    """The chain as boxes top to bottom: data -> teacher -> ... -> model -> version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(reversed(report["models"]))
    d = models[0]["data"]
    boxes = [f"data: {d['dataset']}\nfingerprint {d['fingerprint'][:12]}"]
    for r in models:
        boxes.append(f"{r['model']['name']}\n" + " → ".join(s["step"] for s in r["chain"][-3:])
                     + f"\nonnx {r['model']['onnx']['sha256'][:12]}")
    if report["registered"]:
        v = report["registered"]
        boxes.append(f"{v['name']} v{v['version']}\n{', '.join(v['aliases'])}")
    fig, ax = plt.subplots(figsize=(6, 1.4 * len(boxes)), dpi=100)
    for i, text in enumerate(boxes):
        y = len(boxes) - i
        ax.text(0.5, y, text, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "#e8f0fe", "ec": "#3367d6"})
        if i:
            ax.annotate("", xy=(0.5, y + 0.3), xytext=(0.5, y + 0.7),
                        arrowprops={"arrowstyle": "->"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0.3, len(boxes) + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- verify ---------------------------------------------------------------------------------


def _download(uri: str, artifact_uri: str, dst: Path) -> Path | None:
    import mlflow

    client(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=str(dst)))
    except Exception:
        return None


def _check_hash(item: str, path: Path | None, expected: str, where: str) -> Check:
    if path is None or not path.is_file():
        return Check(item=item, status="MISSING", detail=f"not found in {where}")
    got = file_sha256(path)
    if got != expected:
        return Check(item=item, status="MISMATCH",
                     detail=f"sha256 {got[:16]}… != recorded {expected[:16]}… ({where})")
    return Check(item=item, status="OK", detail=f"sha256 {got[:16]}… ({where})")


def restore_prepared(dvc_entry: dict[str, Any], root: Path, dest: Path) -> tuple[str, list[str]]:
    """Copy the prepared data with DVC hash ``dvc_entry`` out of the DVC cache or remote
    into ``dest``, checking every file's md5. Returns (where, problems)."""
    from shrinkflow.versioning import find_object, md5_file, object_stores

    stores = object_stores(root)
    md5 = dvc_entry["md5"]
    found = find_object(stores, md5)
    if found is None:
        return "", [f"directory listing {md5} not in {', '.join(s for s, _ in stores)}"]
    where, listing = found
    problems = []
    if md5_file(listing) != md5.removesuffix(".dir"):
        problems.append(f"listing {md5} is corrupt in {where}")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in json.loads(listing.read_text()):
        obj = find_object(stores, entry["md5"])
        if obj is None:
            problems.append(f"{entry['relpath']}: md5 {entry['md5']} missing")
            continue
        if md5_file(obj[1]) != entry["md5"]:
            problems.append(f"{entry['relpath']}: md5 mismatch in {obj[0]}")
        shutil.copyfile(obj[1], dest / entry["relpath"])
    return where, problems


def _data_fingerprint(path: Path) -> str:
    import numpy as np

    from shrinkflow.data import fingerprint

    meta = json.loads((path / "meta.json").read_text())
    arrays = {p.stem: np.load(p, allow_pickle=False) for p in path.glob("*.npy")}
    return fingerprint(arrays, {k: meta[k] for k in ("scale", "mean", "std")})


def verify(report: dict[str, Any], root: str | Path) -> list[Check]:
    """Recompute every hash in the chain: ONNX files and checkpoints in the MLflow
    artifact store, the prepared data in the DVC cache/remote and in the workspace, the
    calibration subsets, the code commit."""
    import subprocess

    uri, root = report["tracking_uri"], Path(root)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, r in enumerate(report["models"]):
            m, name = r["model"], r["model"]["name"]
            onnx_path = _download(uri, m["onnx"]["mlflow_location"], tmp / f"o{i}")
            checks.append(_check_hash(f"{name}: ONNX model", onnx_path,
                                      m["onnx"]["mlflow_sha256"], "MLflow model store"))
            ckpt = _download(uri, f"runs:/{r['run_id']}/{m['checkpoint']['artifact']}",
                             tmp / f"c{i}")
            checks.append(_check_hash(f"{name}: checkpoint", ckpt, m["checkpoint"]["sha256"],
                                      "MLflow run artifacts"))
        d = report["models"][-1]["data"]
        restored = tmp / "prepared"
        if d.get("dvc"):
            where, problems = restore_prepared(d["dvc"], root, restored)
            if not where:
                checks.append(Check(item="data (DVC)", status="MISSING", detail=problems[0]))
            elif problems:
                checks.append(Check(item="data (DVC)", status="MISMATCH",
                                    detail="; ".join(problems)))
            else:
                fp = _data_fingerprint(restored)
                status = "OK" if fp == d["fingerprint"] else "MISMATCH"
                checks.append(Check(item="data (DVC)", status=status,
                                    detail=f"{d['dvc']['md5']} from {where}; fingerprint "
                                           f"{fp[:16]}…"))
        else:
            checks.append(Check(item="data (DVC)", status="MISSING",
                                detail="the run did not record its data in dvc.lock"))
        ws_data = root / "data" / "prepared"
        if (ws_data / "meta.json").is_file():
            fp = _data_fingerprint(ws_data)
            if fp == d["fingerprint"]:
                checks.append(Check(item="data (workspace)", status="OK",
                                    detail=f"{ws_data} fingerprint {fp[:16]}…"))
            else:
                checks.append(Check(item="data (workspace)", status="INFO" if not
                                    _same_meta(ws_data, d) else "MISMATCH",
                                    detail=f"{ws_data} holds other data (fingerprint "
                                           f"{fp[:16]}…)"))
        checks += _verify_calibration(report, restored if restored.is_dir() else ws_data)
        commit = report["models"][0]["code"]["git_commit"]
        ok = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                            capture_output=True).returncode == 0
        checks.append(Check(item="code", status="OK" if ok else "MISSING",
                            detail=f"git commit {commit} {'exists' if ok else 'not found'} in "
                                   f"{root}"))
    return checks


def _same_meta(path: Path, d: dict[str, Any]) -> bool:
    """True when the workspace data claims to be the recorded version (so a different
    content is tampering, not simply newer data)."""
    meta = json.loads((path / "meta.json").read_text())
    return meta.get("fingerprint") == d["fingerprint"]


def _verify_calibration(report: dict[str, Any], data_dir: Path) -> list[Check]:
    from shrinkflow.compress.quantize import calibration_subset
    from shrinkflow.data import load_prepared

    checks = []
    for r in report["models"]:
        fp = r["model"].get("calibration_fingerprint")
        if not fp:
            continue
        size = next((s["config"]["calibration_size"] for s in r["chain"]
                     if s["step"] == "quantize" and "calibration_size" in s["config"]), None)
        if size is None or not (data_dir / "meta.json").is_file():
            checks.append(Check(item=f"{r['model']['name']}: calibration subset",
                                status="MISSING", detail="data or config unavailable"))
            continue
        splits = load_prepared(data_dir)
        _, got = calibration_subset(splits.x_val, splits.y_val, size)
        checks.append(Check(item=f"{r['model']['name']}: calibration subset",
                            status="OK" if got == fp else "MISMATCH",
                            detail=f"sha256 {got[:16]}… (recomputed from the data)"))
    return checks


# --- reverse queries ---------------------------------------------------------------------------


def find_versions(uri: str, data: str | None = None, commit: str | None = None
                  ) -> list[dict[str, Any]]:
    """Registered versions derived from a data version (fingerprint, source fingerprint,
    DVC md5, or a prepared-data directory / source file path) or from a git commit."""
    c = client(uri)
    wanted: set[str] = set()
    if data:
        p = Path(data)
        if (p / "meta.json").is_file():
            wanted.add(_data_fingerprint(p))
        elif p.is_file():
            wanted.add(file_sha256(p))
        else:
            wanted.add(data.lower())
    rows = []
    for rm in c.search_registered_models():
        for mv in c.search_model_versions(f"name='{rm.name}'"):
            run_id = mv.tags.get(f"{TAG}model_run_id")
            if not run_id:
                continue
            try:
                rec = load_lineage(uri, run_id)
            except ShrinkflowError:
                continue
            chain_data = rec["data"]
            keys = {chain_data["fingerprint"], chain_data.get("source_fingerprint") or "",
                    (chain_data.get("dvc") or {}).get("md5", "")}
            match = True
            if data:
                match = any(k and any(k.startswith(w) or w == k for w in wanted) for k in keys) \
                    or _source_file_match(rec, wanted)
            if commit:
                match = match and rec["code"]["git_commit"].startswith(commit)
            if match:
                rows.append({"name": rm.name, "version": str(mv.version),
                             "variant": rec["model"]["name"],
                             "data": chain_data["fingerprint"][:16],
                             "commit": rec["code"]["git_commit"][:12],
                             "aliases": sorted(a for a, v in (rm.aliases or {}).items()
                                               if str(v) == str(mv.version))})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def _source_file_match(rec: dict[str, Any], wanted: set[str]) -> bool:
    """A raw source file given by path: compare with the source fingerprint recipe."""
    import hashlib

    d = rec["data"]
    for w in wanted:
        h = hashlib.sha256(d["dataset"].encode())
        h.update(w.encode())
        if h.hexdigest() == d.get("source_fingerprint"):
            return True
    return False


# --- reproduce ---------------------------------------------------------------------------------

COMPARED = ("test_accuracy", "onnx_test_accuracy", "parity_top1_agreement", "params",
            "sparsity", "size_bytes")


def reproduce(uri: str, target: str, root: str | Path, tolerance: float = 0.005,
              keep: Path | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """Re-derive ``target`` from its lineage in a temporary workspace (data by hash from
    DVC, the recorded params and seeds) and compare the new metrics with the recorded
    ones: accuracies within ``tolerance`` (absolute), sizes within 1 %, counts exact."""
    import mlflow

    from shrinkflow import export, training, validate, variants
    from shrinkflow.config import parse_params, read_yaml
    from shrinkflow.data import data_record, prepare
    from shrinkflow.workspace import Workspace

    report = audit(uri, target)
    records = report["models"]
    client(uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{records[0]['pipeline_run_id']}/params.yaml")
    except Exception:
        raise ShrinkflowError(f"pipeline run {records[0]['pipeline_run_id']}: no params.yaml "
                              "artifact; cannot reproduce") from None
    names = [r["model"]["name"] for r in reversed(records)]
    tmp_root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="shrinkflow-reproduce-"))
    try:
        params_path = tmp_root / "params.yaml"
        tmp_root.mkdir(parents=True, exist_ok=True)
        params_path.write_text(text)
        raw = read_yaml(params_path)
        raw["variants"] = {n: v for n, v in (raw.get("variants") or {}).items() if n in names}
        params = parse_params(raw, source=f"run {records[0]['pipeline_run_id']} params.yaml")
        ws = Workspace.at(tmp_root)
        d = records[-1]["data"]
        if d.get("dvc"):
            where, problems = restore_prepared(d["dvc"], Path(root), ws.data_dir)
            if problems:
                raise ShrinkflowError("data from DVC: " + "; ".join(problems))
        else:
            prepare(params.prepare, ws.data_dir)
        data = data_record(ws.data_dir)
        if data.fingerprint != d["fingerprint"]:
            raise ShrinkflowError(f"data fingerprint {data.fingerprint[:16]}… differs from the "
                                  f"recorded {d['fingerprint'][:16]}…; cannot reproduce")
        threads = params.base.torch_threads
        models = {"teacher": training.train(params.train, data, ws.checkpoint("teacher"),
                                            threads)}
        for n in names[1:]:
            models[n] = variants.run_chain(params, n, ws, data, threads)
        pairs = []
        for n in names:
            quant = params.variants[n].onnx_quantize if n in params.variants else None
            pairs.append((models[n], export.convert(models[n], params.convert, ws.onnx(n), data,
                                                    quant)))
        results = validate.validate_all(pairs, data, params.validate_, ws.validate_metrics)
    finally:
        if keep is None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    rows, ok = [], True
    recorded = {r["model"]["name"]: r for r in records}
    for m, (_, onnx_art) in zip(results, pairs, strict=True):
        rec = recorded[m.name]
        for key in COMPARED:
            if key not in rec["metrics"]:
                continue
            old, new = rec["metrics"][key], m.values[key]
            if key in ("params",):
                within = old == new
            elif key == "size_bytes":
                within = abs(new - old) <= 0.01 * old
            else:
                within = abs(new - old) <= tolerance
            ok &= within
            rows.append({"model": m.name, "metric": key, "recorded": old, "reproduced": new,
                         "diff": new - old, "within": within})
        rows.append({"model": m.name, "metric": "onnx_sha256 identical",
                     "recorded": rec["model"]["onnx"]["sha256"][:16],
                     "reproduced": onnx_art.sha256[:16], "diff": None,
                     "within": True, "info": onnx_art.sha256 == rec["model"]["onnx"]["sha256"]})
    return ok, rows
