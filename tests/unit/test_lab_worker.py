"""The lab worker's process handling, on plain processes: what it kills must be the whole tree,
including children in sessions of their own (as Prefect starts its flow-run processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lab.worker import _parent, descendants, running

# a child in a session of its own, as the process worker starts `python -m prefect.engine`
TREE = ("import subprocess, sys, time; "
        "subprocess.Popen(['sleep', '60'], start_new_session=True); "
        "print('ready', flush=True); time.sleep(60)")


def test_parent_is_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    assert _parent("42 (a) b (c)) S 7 42 42 0 -1") == 7


def test_descendants_cross_sessions_and_killed_ones_are_not_running() -> None:
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        [child] = descendants(parent.pid)
        assert running(child) and os.getsid(child) != os.getsid(parent.pid)
        for pid in (parent.pid, child):
            os.kill(pid, signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        # gone, or a zombie its new parent has not reaped yet: either way not running
        assert not running(child) and not running(parent.pid)
    finally:
        parent.kill()
        parent.wait()
