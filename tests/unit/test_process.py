"""exporter/process.py: the process_* families as prometheus_client's ProcessCollector exports
them (names, types, help, values), read cheaper."""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

from exporter.process import ProcessMetrics


def _by_name(metrics: Iterable[Metric]) -> dict[str, tuple[str, str, float]]:
    return {m.name: (m.type, m.documentation, m.samples[0].value) for m in metrics}


def test_the_same_families_as_prometheus_clients_process_collector() -> None:
    ours = _by_name(ProcessMetrics().collect())
    theirs = _by_name(ProcessCollector(registry=None).collect())
    assert {n: (t, d) for n, (t, d, _) in ours.items()} == {
        n: (t, d) for n, (t, d, _) in theirs.items()}
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert ours[name][2] == theirs[name][2], name
    assert abs(ours["process_open_fds"][2] - theirs["process_open_fds"][2]) <= 1  # ours kept
    assert abs(ours["process_resident_memory_bytes"][2]
               - theirs["process_resident_memory_bytes"][2]) < 8 * 1024 * 1024
    assert 0 < ours["process_cpu_seconds"][2] <= theirs["process_cpu_seconds"][2] + 0.05


def test_values_are_read_afresh_on_every_collection() -> None:
    """The descriptor kept open renders /proc/self/stat again at each read: CPU spent and
    memory touched between two collections show."""
    process = ProcessMetrics()
    before = _by_name(process.collect())
    ballast = bytearray(64 * 1024 * 1024)  # touched: resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    deadline = os.times().user + 0.05
    while os.times().user < deadline:
        pass
    after = _by_name(process.collect())
    assert (after["process_resident_memory_bytes"][2]
            > before["process_resident_memory_bytes"][2] + 32 * 1024 * 1024)
    assert after["process_cpu_seconds"][2] > before["process_cpu_seconds"][2]
    del ballast
