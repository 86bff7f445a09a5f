"""Latency is measured interleaved in rounds; an undecided comparison gets more rounds
(bounded), then a verdict."""

import numpy as np

from shrinkflow.steps.validate import LatencyStep, measure_rounds, undecided_models


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


def _measure(parent_ms, child_ms, noise, max_rounds, threshold=0.05):
    runners = {"parent": FakeRunner(parent_ms, noise, 1), "child": FakeRunner(child_ms, noise, 2)}
    x = np.zeros((4, 1, 2, 2), np.float32)
    samples = {n: {"1": [], "256": []} for n in runners}
    config = LatencyStep(pairs=[("child", "parent")], threshold=threshold, gate_batch=1)
    measure_rounds(runners, x, samples, 3, 0, {1: 8})
    rounds = 3
    while rounds < max_rounds and undecided_models(samples, config):
        measure_rounds(runners, x, samples, 1, 0, {1: 8})
        rounds += 1
    return rounds, undecided_models(samples, config)


def test_a_clear_difference_is_decided_in_the_base_rounds():
    rounds, left = _measure(2.0, 1.0, 0.05, 10)
    assert rounds == 3 and left == []


def test_a_noisy_pair_gets_more_rounds_then_a_verdict():
    rounds, left = _measure(1.2, 1.0, 0.6, 12)  # 20 % apart under heavy noise
    assert rounds > 3
    assert rounds == 12 or left == []  # decided, or stopped at the bound
