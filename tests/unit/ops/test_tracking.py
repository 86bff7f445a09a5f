"""The MLflow adapter's process-wide side effects."""


def test_client_leaves_no_tracking_uri_behind(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; shrinkflow reads that variable
    # as the user's choice, so a second workspace in the same process would record here.
    import os

    from shrinkflow.ops.tracking import client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client(f"sqlite:///{tmp_path / 'a.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:5000")
    client(f"sqlite:///{tmp_path / 'b.db'}")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://user:5000"
