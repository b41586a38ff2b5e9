"""The bench's timers on a fake clock: what they call and how they divide."""

from __future__ import annotations

from lpmace.bench import measure


class _Clock:
    """perf_counter that a call of `work` advances by `step` seconds."""

    def __init__(self, step: float):
        self.now, self.step, self.calls = 100.0, step, 0

    def __call__(self) -> float:
        return self.now

    def work(self) -> None:
        self.calls += 1
        self.now += self.step


def test_back_to_back_is_the_mean_of_its_calls_between_one_pair_of_syncs(monkeypatch):
    clock = _Clock(0.004)
    syncs = []
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    monkeypatch.setattr(measure, "synchronize", lambda device: syncs.append(clock.calls))
    ms = measure.back_to_back(clock.work, "cuda", repeats=5)
    assert clock.calls == 5 and syncs == [0, 5]  # one sync before the first call, one after the last
    assert abs(ms - 4.0) < 1e-9


def test_timed_syncs_around_every_call_and_back_to_back_takes_at_least_one(monkeypatch):
    clock = _Clock(0.002)
    syncs = []
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    monkeypatch.setattr(measure, "synchronize", lambda device: syncs.append(clock.calls))
    result = measure.timed(clock.work, "cuda", repeats=3, warmup=2)
    assert clock.calls == 5 and syncs == [2, 3, 3, 4, 4, 5]
    assert result["repeats"] == 3 and abs(result["median_ms"] - 2.0) < 1e-9
    assert abs(measure.back_to_back(clock.work, "cuda", repeats=0) - 2.0) < 1e-9 and clock.calls == 6
