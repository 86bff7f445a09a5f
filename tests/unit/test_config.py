from pathlib import Path

import pytest

from shrinkflow.config import Params, load_params
from shrinkflow.errors import ShrinkflowError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_params_are_valid_and_equal_defaults_where_unset():
    params = load_params(REPO / "params.yaml")
    assert params.prepare.dataset == "digits"
    assert params.validate_.gates.max_abs_diff > 0


def test_override_changes_value_and_parses_yaml():
    params = load_params(REPO / "params.yaml", ["train.epochs=5", "train.model.blocks=[[4],[8]]"])
    assert params.train.epochs == 5
    assert params.train.model.blocks == [[4], [8]]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-0.1", "train.lr: must be > 0"),
        ("train.epochs=zero", "train.epochs: must be an integer"),
        ("train.nope=1", "train.nope: unknown key"),
        ("prepare.dataset=mnist", "prepare.dataset: must be one of"),
        ("validate.gates.min_top1_agreement=2", "validate.gates.min_top1_agreement: must be <= 1"),
        ("prepare.dataset=npz", "prepare: dataset 'npz' needs prepare.path"),
        ("train.model.blocks=[[]]", "train.model: blocks[0] is empty"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ShrinkflowError) as err:
        load_params(REPO / "params.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(ShrinkflowError, match=r"params.yaml: line \d+, column \d+: YAML syntax"):
        load_params(bad)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ShrinkflowError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ShrinkflowError, match="expected KEY=VALUE"):
        load_params(None, ["train.epochs"])


def test_config_hash_is_stable_and_sensitive():
    a, b = Params(), Params()
    assert a.train.config_hash() == b.train.config_hash()
    c = load_params(None, ["train.lr=0.01"])
    assert c.train.config_hash() != a.train.config_hash()
    assert c.prepare.config_hash() == a.prepare.config_hash()


def test_dump_uses_yaml_names():
    assert "validate" in Params().dump()
