"""Typed lineage: /2 round-trips, /1 (written before the refactor) still reads."""

import json

import pytest

from shrinkflow.ops.lineage import FORMAT, Lineage

V1 = {
    "format": "shrinkflow.lineage/1",
    "model": {"name": "pr_q8", "quantization": "static", "calibration_fingerprint": "c" * 64,
              "onnx": {"sha256": "a" * 64, "artifact": "pr_q8/model.onnx",
                       "mlflow_uri": "models:/m-1", "mlflow_location": "file:///x/model.onnx",
                       "mlflow_sha256": "b" * 64},
              "checkpoint": {"sha256": "d" * 64, "artifact": "checkpoint/pr_q8.pt"}},
    "chain": [{"step": "train", "config": {"epochs": 2}, "config_hash": "1" * 16,
               "seconds": 2.0, "checkpoint_sha256": "e" * 64},
              {"step": "quantize", "config": {"method": "static"}, "config_hash": "2" * 16,
               "seconds": None, "calibration_fingerprint": "c" * 64}],
    "parent": {"name": "pr", "run_id": "r1"},
    "data": {"dataset": "digits", "fingerprint": "f" * 64, "source_fingerprint": "g" * 64,
             "split_seed": 0, "counts": {"train": 1, "val": 1, "test": 1}, "source": None,
             "dvc": {"path": "data/prepared", "md5": "0" * 32 + ".dir", "nfiles": 7}},
    "code": {"git_commit": "h" * 40, "git_dirty": "false", "code_hash": "3" * 16},
    "environment": {"torch": "2.13.0"}, "params_hash": "4" * 16, "pipeline_run_id": "p1",
    "run_id": "r2", "created": "2026-11-01T00:00:00+00:00",
}


def test_format_1_reads_into_the_typed_record():
    rec = Lineage.from_json(json.dumps(V1))
    assert rec.model.onnx.mlflow_sha256 == "b" * 64 and rec.parent.run_id == "r1"
    assert rec.chain[1].output_hash == "c" * 64 and rec.chain[0].worker == ""
    assert rec.data.dvc.md5.endswith(".dir") and rec.machine == {}


def test_round_trip_writes_format_2():
    rec = Lineage.from_json(json.dumps(V1))
    again = Lineage.from_json(rec.to_json())
    assert again == rec and json.loads(rec.to_json())["format"] == "shrinkflow.lineage/1"
    assert Lineage.model_validate({**V1, "format": FORMAT}).format == FORMAT


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown lineage format"):
        Lineage.from_json(json.dumps({**V1, "format": "other/9"}))
