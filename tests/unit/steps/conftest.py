import pytest

from shrinkflow.data.prepare import PrepareParams
from shrinkflow.models.cnn import ArchParams
from shrinkflow.steps.fit import FitParams
from shrinkflow.steps.train import TrainParams
from tests.steps_helpers import call

TINY = ArchParams(blocks=[[8], [16]], dropout=0.0)
FIT = FitParams(epochs=2, lr=2e-3, batch_size=32)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """300 digits and a teacher trained for 4 epochs."""
    root = tmp_path_factory.mktemp("tiny")
    data = call("prepare", PrepareParams(max_train=300), root / "prepare")
    teacher = call("train", TrainParams(model=TINY, epochs=4, batch_size=32), root / "train",
                   label="teacher", data=data)
    return root, data, teacher
