"""Latency is measured interleaved in rounds; an undecided comparison gets more rounds
(bounded), then a verdict."""

import numpy as np

from shrinkflow.steps.validate import LatencyStep, sample_latency, undecided_models


class FakeRunner:
    """A 'model' whose calls take ``ms`` milliseconds (+ lognormal noise), busy-waiting."""

    def __init__(self, ms: float, noise: float, seed: int):
        self.ms, self.noise = ms, noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, x):
        import time

        end = time.perf_counter() + self.ms * self.rng.lognormal(0, self.noise) / 1e3
        while time.perf_counter() < end:
            pass
        return x


def _measure(parent_ms, child_ms, noise, max_rounds, threshold=0.05, other_ms=None):
    runners = {"parent": FakeRunner(parent_ms, noise, 1), "child": FakeRunner(child_ms, noise, 2)}
    pairs = [("child", "parent")]
    if other_ms is not None:  # a second child, clearly faster, judged against the same parent
        runners["other"] = FakeRunner(other_ms, 0.01, 3)
        pairs.append(("other", "parent"))
    x = np.zeros((4, 1, 2, 2), np.float32)
    config = LatencyStep(pairs=pairs, threshold=threshold, gate_batch=1, rounds=3,
                         max_rounds=max_rounds, warmup=0)
    samples, rounds = sample_latency(runners, x, config, {1: 8})
    assert rounds == max(len(s["1"]) for s in samples.values())
    return samples, rounds, undecided_models(samples, config)


def test_a_clear_difference_is_decided_in_the_base_rounds():
    _, rounds, left = _measure(2.0, 1.0, 0.05, 10)
    assert rounds == 3 and left == []


def test_a_noisy_pair_gets_more_rounds_then_a_verdict():
    _, rounds, left = _measure(1.2, 1.0, 0.6, 12)  # 20 % apart under heavy noise
    assert rounds > 3
    assert rounds == 12 or left == []  # decided, or stopped at the bound


def test_only_undecided_models_get_more_rounds():
    # child is within noise of the threshold; other is 2x faster, decided at once
    samples, rounds, _ = _measure(1.05, 1.0, 0.3, 11, other_ms=0.5)
    assert rounds > 3
    assert len(samples["parent"]["1"]) == len(samples["child"]["1"]) == rounds
    assert len(samples["other"]["1"]) == 3
