"""Database growth from the sizes the source has seen: the doctor's rate, bounded memory."""

from __future__ import annotations

from exporter.postgres.growth import MIN_SPAN_SECONDS, WINDOW_SECONDS, GrowthTracker, slope


def test_slope_is_the_least_squares_rate() -> None:
    assert slope([(0, 10), (10, 30), (20, 50)]) == 2.0
    assert slope([(5, 1), (5, 1)]) == 0.0


def test_growth_needs_half_an_hour_then_follows_the_last_six_hours() -> None:
    tracker = GrowthTracker()
    growth: dict[str, float] = {}
    for minute in range(0, 31):  # 1 MB a minute
        growth = tracker.update(minute * 60.0, {"prefect": 1_000_000 * minute})
        if minute * 60 < MIN_SPAN_SECONDS:
            assert growth == {}
    assert abs(growth["prefect"] - 1_000_000 / 60) < 1e-6
    # polled every second for two more hours: one sample a minute is kept, six hours at most
    for second in range(31 * 60, 31 * 60 + 2 * 3600):
        tracker.update(float(second), {"prefect": 7})
    samples = tracker._samples["prefect"]
    assert len(samples) <= WINDOW_SECONDS // 60 + 1
    assert samples[-1][0] - samples[0][0] <= WINDOW_SECONDS


def test_a_dropped_database_is_forgotten() -> None:
    tracker = GrowthTracker()
    tracker.update(0.0, {"a": 1, "b": 1})
    tracker.update(60.0, {"a": 2})
    assert set(tracker._samples) == {"a"}
