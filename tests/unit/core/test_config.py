"""Reading params: one line per problem, naming the file, the line or the key."""

import pytest

from shrinkflow.core.config import apply_overrides, read_yaml, stable_hash
from shrinkflow.core.errors import ShrinkflowError


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(ShrinkflowError, match=r"params.yaml: line \d+, column \d+: YAML syntax"):
        read_yaml(bad)


@pytest.mark.parametrize("content, message", [
    (b"", "the params file is empty"),
    (b"# only a comment\n", "the params file is empty"),
    (b"- a\n- b\n", "the top level must be a mapping"),
    (b"train: {epochs: 3}\n\xff\xfe", "not UTF-8 text"),
])
def test_empty_non_mapping_and_non_utf8_files_are_refused(tmp_path, content, message):
    f = tmp_path / "params.yaml"
    f.write_bytes(content)
    with pytest.raises(ShrinkflowError, match=message):
        read_yaml(f)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ShrinkflowError, match="params file not found"):
        read_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ShrinkflowError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ShrinkflowError, match="is not a section"):
        apply_overrides({"train": 3}, ["train.epochs=2"])


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
