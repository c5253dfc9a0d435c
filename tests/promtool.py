"""`promtool test rules` over many test groups, split across the machine's CPUs: promtool
evaluates one group after another on one core, and the rules tests are the unit suite's
longest (a group per case or scenario)."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

PROMTOOL = shutil.which("promtool") or "promtool"  # scripts/bootstrap installs it


def run_rule_tests(directory: Path, rules: str, document: dict[str, Any]) -> tuple[int, str]:
    """Writes rules (YAML) to rules.yml and runs `promtool test rules` on document's test groups
    (its rule_files naming rules.yml), as many files as CPUs, at once. Returns the first failing
    run's exit status (0 when none failed; a run killed by a signal is negative) and what the
    failing runs printed (all runs' output when none failed)."""
    (directory / "rules.yml").write_text(rules)
    groups: list[Any] = document["tests"]
    parts = max(1, min(len(groups), os.cpu_count() or 1))
    names = []
    for i in range(parts):
        name = f"tests-{i}.yml"
        (directory / name).write_text(yaml.safe_dump(
            {**document, "tests": groups[i::parts]}, sort_keys=False))
        names.append(name)

    def run(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PROMTOOL, "test", "rules", name], cwd=directory,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(parts) as pool:
        done = list(pool.map(run, names))
    failed = [d for d in done if d.returncode != 0]
    return (failed[0].returncode if failed else 0,
            "".join(d.stdout + d.stderr for d in (failed or done)))
