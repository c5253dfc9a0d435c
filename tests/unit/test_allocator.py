"""Freed memory goes back to the OS after a poll (glibc's malloc_trim)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from exporter import allocator

# 80 MB in 1 kB chunks (malloc's, not pymalloc's), every 100th kept: the heap is fragmented,
# glibc cannot trim its top, and RSS stays up until malloc_trim releases the free pages
SCRIPT = """
from exporter.allocator import release_free_memory

def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024

chunks = [bytes(1000) + bytes([i % 256]) for i in range(80_000)]
kept = chunks[::100]
del chunks
before = rss()
released = release_free_memory()
print(before, rss(), released)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_pages_of_a_fragmented_heap_go_back_to_the_os() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    before, after, released = done.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 40, done.stdout  # most of the 80 MB


def test_without_the_call_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_looked_up", True)
    monkeypatch.setattr(allocator, "_trim", None)
    assert not allocator.available()
    assert allocator.release_free_memory() is False
