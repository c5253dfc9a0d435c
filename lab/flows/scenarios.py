"""The lab's flows: real Prefect flows a process worker runs from this directory (lab/worker.py
deploys them), one for each way a run ends or never does.

Run by the lab's Prefect virtualenv, not the project's: nothing here is imported by the exporter
or its tests, and it is not type-checked with them (prefect is not installed there).
"""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency


@flow
def completes(limit: str = "") -> int:
    """COMPLETED; with a limit, it takes one slot the proper way and gives it back."""
    if limit:
        with concurrency(limit, occupy=1):
            time.sleep(0.5)
    return 42


@flow
def fails() -> None:
    """FAILED: the flow's code raises, the engine reports it."""
    raise ValueError("the lab's failing flow")


@flow
def crashes() -> None:
    """CRASHED: the process dies without reporting anything (as after an OOM kill); the worker
    sees its exit code."""
    os._exit(3)


@flow
def hangs(seconds: float = 3600) -> None:
    """RUNNING for as long as it is let, sending heartbeats: stuck, not a zombie."""
    time.sleep(seconds)


@flow
def leaks(limit: str, slots: int) -> None:
    """Takes slots of a global concurrency limit without a lease (the API's plain increment, as
    clients before leases and rate limits do) and dies before giving them back: they stay taken
    until someone resets the limit."""
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots(names=[limit], slots=slots,
                                           mode="concurrency").raise_for_status()
    os._exit(4)
