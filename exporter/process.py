"""The process_* metrics every Prometheus client library exports, under prometheus_client's
ProcessCollector's names, help and values, read with fewer system calls: it opens, parses and
closes /proc/self/stat, /proc/self/limits and /proc/stat on every collection; here
/proc/self/stat is read through a descriptor kept open (pread at offset 0 renders it afresh),
the limit comes from getrlimit() and the boot time is read once. The exposition collects them
after every poll: that was a twentieth of a poll's CPU.

Only on Linux (like ProcessCollector): without /proc there are no process metrics.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("/proc/stat has no btime")


class ProcessMetrics(Collector):
    def __init__(self) -> None:
        try:
            self._boot = _boot_time()
            self._stat: int | None = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._stat = None

    def collect(self) -> Iterator[Metric]:
        if self._stat is None:
            return
        try:
            # the fields after the command name, which may hold spaces and parentheses
            fields = os.pread(self._stat, 4096, 0).rsplit(b")", 1)[1].split()
            open_fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            return
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                value=float(fields[20]))
        yield GaugeMetricFamily("process_resident_memory_bytes",
                                "Resident memory size in bytes.",
                                value=float(fields[21]) * _PAGE_SIZE)
        yield GaugeMetricFamily("process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.",
                                value=float(fields[19]) / _TICKS + self._boot)
        yield CounterMetricFamily("process_cpu_seconds",
                                  "Total user and system CPU time spent in seconds.",
                                  value=(float(fields[11]) + float(fields[12])) / _TICKS)
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                value=open_fds)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:  # /proc/self/limits says "unlimited"
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                                    value=soft)
