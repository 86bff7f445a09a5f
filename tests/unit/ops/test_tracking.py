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


def test_a_new_store_is_created_by_its_first_client(tmp_path, monkeypatch):
    """A new SQLite store (no run in it: a run cannot be a no-op) is created where it is
    first opened; the store is the one MLflow makes (its default experiment, schema)."""
    from shrinkflow.ops import tracking

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.is_new_store(uri) and not tracking.is_new_store("http://127.0.0.1:5000")
    exp = tracking.client(uri).get_experiment("0")
    assert exp.name == "Default" and not tracking.is_new_store(uri)
    c = tracking.client(uri)
    run = c.create_run(c.create_experiment("x"))
    assert run.info.status == "RUNNING"
