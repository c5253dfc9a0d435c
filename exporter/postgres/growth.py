"""How fast each database grows, from the sizes the source has seen: the doctor's input for
"days until the size limit" (the alert computes the same with predict_linear over 6 h).

The history is bounded: one sample a minute at most, the last six hours, per database.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

WINDOW_SECONDS = 6 * 3600
SAMPLE_EVERY_SECONDS = 60.0
MIN_SPAN_SECONDS = 30 * 60  # less history than this says nothing about a trend


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time, value) points: what PromQL's deriv() computes."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    variance = sum((t - mean_t) ** 2 for t, _ in points)
    if variance == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / variance


class GrowthTracker:
    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def update(self, now: float, sizes: Mapping[str, int]) -> dict[str, float]:
        """Record the sizes seen now; the growth (bytes per second) of each database that has
        at least MIN_SPAN_SECONDS of history."""
        for name in set(self._samples) - set(sizes):
            del self._samples[name]  # a dropped database leaves no memory behind
        growth = {}
        for name, size in sizes.items():
            samples = self._samples.setdefault(name, deque())
            if not samples or now - samples[-1][0] >= SAMPLE_EVERY_SECONDS:
                samples.append((now, float(size)))
            while samples and now - samples[0][0] > WINDOW_SECONDS:
                samples.popleft()
            if samples[-1][0] - samples[0][0] >= MIN_SPAN_SECONDS:
                growth[name] = slope(list(samples))
        return growth
