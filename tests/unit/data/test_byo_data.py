"""Image folders and CSV files as data sources; bad data refused in one line naming the
file or column."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data import sources
from shrinkflow.data.prepare import PrepareParams, load_prepared
from shrinkflow.models.spec import MLPParams
from shrinkflow.steps.convert import ConvertStep
from shrinkflow.steps.train import TrainParams
from shrinkflow.steps.validate import ValidateStep
from tests.steps_helpers import call


def _digits(n_per_class: int = 20, classes: int = 3):
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:n_per_class] for c in range(classes)])
    return (d.images[keep] * 16).clip(0, 255).astype(np.uint8), d.target[keep]


def write_imagefolder(root: Path, n_per_class: int = 20, classes: int = 3,
                      suffix: str = ".png") -> Path:
    x, y = _digits(n_per_class, classes)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / f"class_{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}{suffix}")
    return root


def write_csv(path: Path, n_per_class: int = 20, classes: int = 3, names: bool = False) -> Path:
    x, y = _digits(n_per_class, classes)
    flat = x.reshape(len(x), -1) / 16.0
    header = ",".join([f"p{i}" for i in range(flat.shape[1])] + ["label"])
    lines = [header] + [",".join([*(f"{v:g}" for v in row),
                                  f"digit{lab}" if names else str(lab)])
                        for row, lab in zip(flat, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_imagefolder_grayscale_rgb_and_resized(tmp_path):
    root = write_imagefolder(tmp_path / "imgs")
    raw = sources.load(PrepareParams(dataset="imagefolder", path=str(root)))
    assert raw.x.shape == (60, 1, 8, 8) and raw.x.dtype == np.uint8
    assert raw.classes == ["class_0", "class_1", "class_2"] and raw.scale == 255.0
    rgb = sources.load(PrepareParams(dataset="imagefolder", path=str(root), color="rgb",
                                     image_size=(12, 10)))
    assert rgb.x.shape == (60, 3, 12, 10)


def test_imagefolder_jpeg(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", suffix=".jpg")
    assert sources.load(PrepareParams(dataset="imagefolder", path=str(root))).x.shape[0] == 60


def test_bad_image_folders_are_refused_naming_the_file(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", n_per_class=4)
    params = PrepareParams(dataset="imagefolder", path=str(root))
    odd = root / "class_1" / "odd.png"
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(odd)
    with pytest.raises(ShrinkflowError, match=r"odd.png: image size 8x9 differs from 8x8 .*"
                                              r"prepare.image_size"):
        sources.load(params)
    assert sources.load(params.model_copy(update={"image_size": 8})).x.shape[1:] == (1, 8, 8)
    odd.unlink()
    (root / "class_0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ShrinkflowError, match=r"broken.png: unreadable image"):
        sources.load(params)
    (root / "class_0" / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stray.png")
    with pytest.raises(ShrinkflowError, match=r"stray.png: image outside a class folder "
                                              r"\(missing label\)"):
        sources.load(params)
    single = write_imagefolder(tmp_path / "one", classes=1)
    with pytest.raises(ShrinkflowError, match=r"one: a single class folder"):
        sources.load(PrepareParams(dataset="imagefolder", path=str(single)))


def test_csv_numeric_and_named_labels(tmp_path):
    raw = sources.load(PrepareParams(dataset="csv", path=str(write_csv(tmp_path / "d.csv"))))
    assert raw.x.shape == (60, 64) and raw.x.dtype == np.float32 and raw.classes == ["0", "1", "2"]
    named = sources.load(PrepareParams(dataset="csv",
                                       path=str(write_csv(tmp_path / "n.csv", names=True))))
    assert named.classes == ["digit0", "digit1", "digit2"]
    assert (named.y == raw.y).all()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ls: ls[:3] + [",".join(["nan", *ls[3].split(",")[1:]])] + ls[4:],
     r"column 'p0' holds NaN/Inf at line 4"),
    (lambda ls: ls[:3] + [",".join(["", *ls[3].split(",")[1:]])] + ls[4:],
     r"column 'p0' at line 4: empty"),
    (lambda ls: ls[:5] + [",".join([*ls[5].split(",")[:-1], ""])] + ls[6:],
     r"column 'label' is empty at line 6 \(missing label\)"),
    (lambda ls: [ls[0].replace("label", "target")] + ls[1:], r"no column 'label'"),
    (lambda ls: [ls[0]] + [",".join([*r.split(",")[:-1], "7"]) for r in ls[1:]],
     r"column 'label': y has a single class"),
])
def test_bad_csv_is_refused_naming_the_column(tmp_path, edit, message):
    path = write_csv(tmp_path / "d.csv", n_per_class=4)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    params = PrepareParams(dataset="csv", path=str(path))
    with pytest.raises(ShrinkflowError, match=message):
        sources.load(params)


def test_csv_mlp_teacher_trains_converts_and_validates(tmp_path):
    path = write_csv(tmp_path / "d.csv", n_per_class=40, classes=4)
    data = call("prepare", PrepareParams(dataset="csv", path=str(path)), tmp_path / "prep")
    assert load_prepared(data.path).input_shape == (64,)
    teacher = call("train", TrainParams(model=MLPParams(hidden=[32]), epochs=5, batch_size=16),
                   tmp_path / "train", label="teacher", data=data)
    export = call("convert", ConvertStep(), tmp_path / "c", data=data, model=teacher)
    result = call("validate", ValidateStep(target="onnxruntime", threads=1), tmp_path / "v",
                  data=data, model=teacher, export=export)
    assert result.values["parity_top1_agreement"] == 1.0
    assert result.values["onnx_test_accuracy"] > 0.5


def test_imagefolder_prepare_and_train(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", n_per_class=30, classes=3)
    data = call("prepare", PrepareParams(dataset="imagefolder", path=str(root), image_size=16),
                tmp_path / "prep")
    splits = load_prepared(data.path)
    assert splits.input_shape == (1, 16, 16) and splits.meta["classes"][0] == "class_0"
    from shrinkflow.models.cnn import ArchParams

    teacher = call("train", TrainParams(model=ArchParams(blocks=[[4], [8]]), epochs=2,
                                        batch_size=16), tmp_path / "train", data=data)
    assert teacher.num_params > 0


def test_preflight_reads_shapes_and_refuses_a_cnn_on_features(tmp_path):
    from shrinkflow.app.preflight import check_architectures, check_data
    from shrinkflow.plan.params import load_params

    write_csv(tmp_path / "d.csv")
    write_imagefolder(tmp_path / "imgs")
    csv = ["prepare.dataset=csv", "prepare.path=d.csv"]
    params = load_params(None, csv)
    shape = check_data(params, tmp_path)
    assert shape == (64,)
    with pytest.raises(ShrinkflowError, match="train.model: the CNN needs images"):
        check_architectures(params, shape, 3)
    check_architectures(load_params(None, [*csv, "train.model={kind: mlp}"]), shape, 3)
    imgs = load_params(None, ["prepare.dataset=imagefolder", "prepare.path=imgs",
                              "prepare.color=rgb", "prepare.image_size=[16, 12]"])
    assert check_data(imgs, tmp_path) == (3, 16, 12)


@pytest.mark.slow  # git + DVC subprocesses
def test_data_add_versions_a_csv_and_an_image_folder(tmp_path):
    """The same validation as prepare; a bad file is refused before anything is copied."""
    from shrinkflow.ops.snapshots import add_snapshot
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")
    csv = add_snapshot(write_csv(tmp_path / "d.csv"), ws, push=False)
    assert csv["path"] == "data/raw/dataset.csv" and csv["classes"] == 3
    assert "prepare.dataset: csv" in csv["params_note"]
    imgs = add_snapshot(write_imagefolder(tmp_path / "imgs"), ws, push=False)
    assert imgs["path"] == "data/raw/images" and imgs["examples"] == 60
    assert (ws / "data" / "raw" / "images.dvc").is_file()
    bad = write_csv(tmp_path / "bad.csv")
    bad.write_text(bad.read_text().replace("\n0,", "\nnan,", 1))
    with pytest.raises(ShrinkflowError, match="bad.csv: column 'p0' holds NaN/Inf at line 2"):
        add_snapshot(bad, ws, push=False)
