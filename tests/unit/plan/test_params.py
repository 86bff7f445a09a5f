"""params.yaml: validated as a whole, one line naming the key."""

from pathlib import Path

import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.plan.params import STEP_KINDS, Params, load_params

REPO = Path(__file__).resolve().parents[3]


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.dataset == "digits"
    assert params.validate_.gates.max_abs_diff > 0
    assert params.base.torch_threads == 1  # fixed: bytes do not depend on the worker count


def test_variant_step_kinds_come_from_the_registry():
    assert set(STEP_KINDS) == {"prune", "finetune", "quantize", "distill", "distill_layers"}


def test_override_changes_value_and_parses_yaml():
    params = load_params(REPO / "params.yaml", ["train.epochs=5", "train.model.blocks=[[4],[8]]"])
    assert params.train.epochs == 5
    assert params.train.model.blocks == [[4], [8]]


@pytest.mark.parametrize("override, message", [
    ("train.lr=-0.1", "train.lr: must be > 0"),
    ("train.epochs=zero", "train.epochs: must be an integer"),
    ("train.epochs=true", "train.epochs: must be an integer"),
    ("train.seed=99999999999999999999999", "train.seed: must be <= 4294967295"),
    ("train.nope=1", "train.nope: unknown key"),
    ("prepare.dataset=mnist", "prepare.dataset: must be one of"),
    ("validate.gates.min_top1_agreement=2", "validate.gates.min_top1_agreement: must be <= 1"),
    ("prepare.dataset=npz", "prepare: dataset 'npz' needs prepare.path"),
    ("train.model.blocks=[[]]", "train.model: blocks[0] is empty"),
    ("registry.model_name=a/b", "registry.model_name: must match"),
    ("base.dask_address=localhost:8786", "base.dask_address: must match"),
    ("validate.max_rounds=2", "validate.max_rounds: must be >= validate.rounds"),
    ("variants={x: {from: teacher, steps: [{quantize: {method: static}}, {prune: {}}]}}",
     "must be the last step of a variant"),
    ("variants={x: {from: nobody, steps: [{prune: {}}]}}", "unknown model 'nobody'"),
    ("variants={x: {from: teacher, steps: [{sharpen: {}}]}}", "unknown step 'sharpen'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ShrinkflowError) as err:
        load_params(REPO / "params.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_hash_is_stable_and_sensitive():
    a, b = Params(), Params()
    assert a.train.config_hash() == b.train.config_hash()
    c = load_params(None, ["train.lr=0.01"])
    assert c.train.config_hash() != a.train.config_hash()
    assert c.prepare.config_hash() == a.prepare.config_hash()


def test_dump_uses_yaml_names():
    assert "validate" in Params().dump()


def test_a_bad_mapping_key_is_named_without_stray_dots():
    with pytest.raises(ShrinkflowError) as err:
        load_params(None, ["select.weights={speed: 1}"])
    assert str(err.value) == ("params: select.weights: key must be one of 'size', 'latency', "
                              "'accuracy' or 'macs' (got 'speed')")
