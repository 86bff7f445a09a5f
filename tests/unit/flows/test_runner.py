"""The local Dask cluster a run gets: how its scheduler hands out steps, what its workers
load when they start."""

import dask
import pytest


def test_local_cluster_hands_out_every_ready_step(monkeypatch):
    from shrinkflow.flows import runner

    with dask.config.set({}):  # restored after the test
        tr = runner.task_runner(2)
        assert dask.config.get("distributed.scheduler.worker-saturation") == float("inf")
        assert dask.config.get("distributed.scheduler.work-stealing-interval") == "100ms"
    kwargs = tr.cluster_kwargs
    assert kwargs["n_workers"] == 2 and kwargs["threads_per_worker"] == 1
    assert kwargs["preload"] == ["shrinkflow.tasks.worker"]


def test_an_existing_cluster_keeps_its_own_config():
    from shrinkflow.flows import runner

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.1}):
        tr = runner.task_runner(2, "tcp://127.0.0.1:8786")
        assert dask.config.get("distributed.scheduler.worker-saturation") == 1.1
    assert tr.address == "tcp://127.0.0.1:8786"


def _loaded() -> list[str]:
    import sys
    import time

    wanted = ("torch", "shrinkflow.steps.train", "prefect.task_engine")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the worker loads them in the background
        loaded = sorted(m for m in wanted if m in sys.modules)
        if len(loaded) == len(wanted) and "shrinkflow-preload" not in \
                {t.name for t in __import__("threading").enumerate()}:
            return loaded
        time.sleep(0.2)
    return sorted(m for m in wanted if m in sys.modules)


@pytest.mark.slow
def test_a_worker_preloads_the_steps():
    from distributed import Client, LocalCluster
    from shrinkflow.flows import runner

    with dask.config.set(runner.LOCAL_CLUSTER), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=None, preload=["shrinkflow.tasks.worker"]) as cluster, \
            Client(cluster) as client:
        # Prefect is loaded before the worker registers: a thread loading it beside the
        # event loop unpickling the first step can deadlock in Prefect's import cycles.
        at_start = client.run(lambda: "prefect.task_engine" in __import__("sys").modules)
        environ = next(iter(client.run(lambda: dict(__import__("os").environ)).values()))
        loaded = client.submit(_loaded).result()
    assert list(at_start.values()) == [True]
    # glibc's malloc keeps its adaptive mmap threshold (Dask's MALLOC_TRIM_THRESHOLD_
    # fixed it at 128 KiB: every activation tensor mapped and faulted in anew).
    assert "MALLOC_TRIM_THRESHOLD_" not in environ and environ["OMP_NUM_THREADS"] == "1"
    assert loaded == ["prefect.task_engine", "shrinkflow.steps.train", "torch"]


@pytest.mark.slow
def test_a_prestarted_cluster_is_adopted_once_with_its_settings():
    """``shrinkflow run`` starts the cluster beside its own start; the task runner's first
    step adopts it (no second cluster), with the local cluster's settings (the nanny's
    malloc variable dropped: dask's defaults load before ours)."""
    from distributed import Client
    from shrinkflow.flows import runner

    with dask.config.set({}):
        started = runner.prestart_cluster(1, None)
        assert runner.prestart_cluster(1, None) is started  # the same settings: kept
        kwargs = runner.task_runner(1).cluster_kwargs
        cluster = runner.local_cluster(**kwargs)
        try:
            assert cluster is started.cluster and set(runner.cluster_timing) == {"start", "waited"}
            with Client(cluster) as client:
                environ = next(iter(client.run(lambda: dict(__import__("os").environ)).values()))
            assert "MALLOC_TRIM_THRESHOLD_" not in environ
            runner.discard_cluster()  # adopted: not the prestarted one any more
            assert cluster.status.name == "running"
        finally:
            cluster.close()
        other = runner.prestart_cluster(1, None)
        runner.discard_cluster()  # never adopted: closed
        assert other.cluster.status.name == "closed"


def test_prefect_clients_on_a_worker_share_one_tls_context(monkeypatch):
    """A task run on a worker builds two Prefect clients, and each parsed certifi's CA
    bundle into a new TLS context: the worker's preload makes them share one."""
    import ssl

    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from shrinkflow.tasks import worker

    made = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context",
                        lambda *a, **k: made.append(k) or real(*a, **k))
    worker.share_tls_context()
    worker.share_tls_context()  # twice: still one wrapper
    worker._context.cache_clear()
    api = "http://127.0.0.1:9/api"
    SyncPrefectClient(api), SyncPrefectClient(api), PrefectClient(api)
    assert len(made) == 1 and made[0].get("cafile")  # certifi's bundle, loaded once
    assert not getattr(SyncPrefectClient.__init__.__wrapped__, "_shrinkflow_shared_tls", False)


def test_a_flow_dumps_its_settings_once_and_a_worker_builds_them_once(monkeypatch):
    """Prefect ships the flow's settings with every task: the flow dumps one settings
    context once, a worker builds the settings from one dump once; what a task sees is
    what the flow had."""
    import pickle

    from prefect import context, task_engine
    from prefect.settings import PREFECT_API_URL, PREFECT_TASKS_DEFAULT_RETRIES, temporary_settings
    from shrinkflow.flows import daskrunner
    from shrinkflow.tasks import worker

    monkeypatch.setattr(context.SettingsContext, "serialize", context.SettingsContext.serialize)
    monkeypatch.setattr(task_engine, "hydrated_context", task_engine.hydrated_context)
    prefects = context.SettingsContext.serialize
    daskrunner.reuse_settings_dumps()
    worker.reuse_hydrated_settings()
    wrapped = task_engine.hydrated_context
    worker.reuse_hydrated_settings()  # twice: still one wrapper
    assert task_engine.hydrated_context is wrapped
    api = {PREFECT_API_URL: "http://127.0.0.1:9/api"}  # a client is made, never used
    with temporary_settings({**api, PREFECT_TASKS_DEFAULT_RETRIES: 3}):
        flows = context.SettingsContext.get()
        first = context.serialize_context()
        assert context.serialize_context()["settings_context"] is first["settings_context"]
        assert first["settings_context"] == prefects(flows)
    with temporary_settings({**api, PREFECT_TASKS_DEFAULT_RETRIES: 4}):
        other = context.serialize_context()
    seen = []
    for dump in (first, first, other):  # each as a worker gets it: unpickled anew
        with task_engine.hydrated_context(pickle.loads(pickle.dumps(dump))):
            seen.append(context.SettingsContext.get().settings)
    assert seen[0] is seen[1] and seen[0] == flows.settings
    assert (seen[0].tasks.default_retries, seen[2].tasks.default_retries) == (3, 4)


@pytest.mark.slow
def test_steps_on_the_task_runner_see_the_flows_settings_and_are_not_tokenized(
        monkeypatch, prefect_harness):
    """Tasks on the flow's Dask task runner run as on Prefect's own: each sees the flow's
    settings (here one the flow set, not the worker's environment); Dask never hashes a
    submission to make its key."""
    import distributed.client
    from prefect import flow, task
    from prefect.settings import PREFECT_TASKS_DEFAULT_RETRIES, temporary_settings
    from shrinkflow.flows import runner

    def no_tokenize(*args, **kwargs):
        raise AssertionError("a submission was tokenized")

    monkeypatch.setattr(distributed.client, "tokenize", no_tokenize)

    @task
    def retries(i: int) -> tuple[int, int]:
        return i, PREFECT_TASKS_DEFAULT_RETRIES.value()

    @flow(task_runner=runner.task_runner(1))
    def fan_out() -> list[tuple[int, int]]:
        return [f.result() for f in retries.map(range(3))]

    with dask.config.set({}), temporary_settings({PREFECT_TASKS_DEFAULT_RETRIES: 5}):
        assert fan_out() == [(0, 5), (1, 5), (2, 5)]


def test_the_temporary_api_starts_before_prefect_loads_and_only_when_none_is_configured(
        monkeypatch):
    """``prestart`` spawns the temporary API before importing Prefect's settings; an API
    in the environment starts nothing, one in Prefect's settings (a profile) stops it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from shrinkflow.flows import runner

    made = []

    class Api:
        def __init__(self):
            self.stopped = False
            made.append(self)

        def stop(self):
            self.stopped = True

    monkeypatch.setattr(runner, "TemporaryApi", Api)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert runner.prestart() is None and not made
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert runner.prestart() is None
    assert len(made) == 1 and made[0].stopped
    with temporary_settings({PREFECT_API_URL: None}):
        started = runner.prestart()
    assert started is made[1] and not started.stopped
