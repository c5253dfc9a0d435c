"""What the Prefect benchmark prints: each size's figures, and the ratios between sizes."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.prefect_data import Counts, Size
from benchmarks.prefect_paging import PagingResult
from benchmarks.prefect_polls import PollResult
from benchmarks.prefect_ppe import PpeResult


@dataclass
class SizeResult:
    size: Size
    counts: Counts  # events: the size's, the setup's and the recent ones
    runs_seconds: float  # to add the runs of this size
    events_seconds: float  # to add the events of this size
    exporter: PollResult
    retention: PollResult  # every poll reads retention (one in many does as the exporter runs)
    paging: PagingResult | None = None  # None: not measured at this size
    ppe: PpeResult | str = "not measured at this size (it reads no events)"



def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<48}{value:>12}   {note}".rstrip())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def print_poll(label: str, e: PollResult) -> None:
    line(f"{label}, median of {len(e.requests)}", ms(e.median),
         f"best {ms(e.best)}; {sorted(set(e.requests))} requests per poll; SCHEDULED seen "
         f"{e.scheduled_seen:,}")
    print("    mean latency per request, up to 4 in flight: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in sorted(e.latency.items(), key=lambda kv: -kv[1])))


def print_size(r: SizeResult) -> None:
    e, p = r.exporter, r.paging
    c = r.counts
    types = ", ".join(f"{k} {v:,}" for k, v in sorted(c.by_type.items(), key=lambda kv: -kv[1]))
    print(f"\nAt {r.size.runs:,} flow runs and {c.events:,} events ({types}; events and "
          f"event_resources {c.events_bytes / 1024**2:,.0f} MiB; runs added in "
          f"{r.runs_seconds:.1f}s, events in {r.events_seconds:.1f}s):")
    print_poll("exporter poll", e)
    print_poll("exporter poll reading retention", r.retention)
    print(f"    the poll saw: {e.seen}")
    if p is not None:
        line(f"paging baseline, median of {p.rounds}", ms(p.seconds),
             f"{p.pages} requests; {'expected' if p.note else 'counted'} {p.runs:,} SCHEDULED")
        if p.note:
            print(f"    {p.note}")
        line("exporter / paging baseline", f"{e.median / p.seconds:.3f}x")
    if isinstance(r.ppe, str):
        print(f"  prometheus-prefect-exporter: {r.ppe}")
        return
    q = r.ppe
    line(f"prometheus-prefect-exporter scrape, median of {q.scrapes}", ms(q.median),
         f"{q.requests} requests per scrape; {q.samples:,} samples")
    print("    its requests: " + ", ".join(f"{k} {v}" for k, v in q.by_endpoint.items()))
    line("exporter / prometheus-prefect-exporter", f"{e.median / q.median:.3f}x")


TARGET_RATIO = 1.5


def print_ratios(small: SizeResult, large: SizeResult) -> None:
    print(f"\n{large.size.runs:,} runs and {large.counts.events:,} events vs "
          f"{small.size.runs:,} runs and {small.counts.events:,} events:")
    for label, a, b in (("exporter poll", small.exporter, large.exporter),
                        ("exporter poll reading retention", small.retention, large.retention)):
        ratio = b.median / a.median
        line(f"{label} time ratio", f"{ratio:.2f}x",
             f"(target < {TARGET_RATIO:g}x: {'OK' if ratio < TARGET_RATIO else 'ABOVE'}; "
             f"best poll {b.best / a.best:.2f}x)")
        x, y = sorted(set(a.requests)), sorted(set(b.requests))
        verdict = "OK" if len(x) == 1 and x == y else "DIFFERENT"
        line(f"{label} requests", f"{x} vs {y}", f"(must be equal: {verdict})")
    if small.paging is not None and large.paging is not None:
        paging = large.paging.seconds / small.paging.seconds
        line("paging baseline time ratio", f"{paging:.2f}x",
             f"({small.paging.pages} -> {large.paging.pages} requests)")
    if isinstance(small.ppe, PpeResult) and isinstance(large.ppe, PpeResult):
        line("prometheus-prefect-exporter scrape time ratio",
             f"{large.ppe.median / small.ppe.median:.2f}x",
             f"({small.ppe.requests} -> {large.ppe.requests} requests per scrape)")
