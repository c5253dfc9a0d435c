"""What ships: the wheel (and so the image, which installs it) holds the exporter, not the lab
that starts servers for the tests and the demo."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_the_exporter_and_no_lab_code(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("prefect_pg_exporter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"exporter"}, packages
    assert "exporter/postgres/source.py" in names and "exporter/cli.py" in names
    # nothing that creates users, installs Prefect or starts servers
    for name in names:
        if name.endswith(".py"):
            text = zipfile.ZipFile(wheel).read(name).decode()
            assert "useradd" not in text and "pip install" not in text, name


def test_the_image_build_context_holds_no_lab_code() -> None:
    """The image's build stage copies only what .dockerignore lets through (checked with the
    Dockerfile in test_deploy): the lab, the tests and the benchmarks are not among it."""
    allowed = [line.strip()[1:].rstrip("/") for line in
               (ROOT / ".dockerignore").read_text().splitlines() if line.strip().startswith("!")]
    assert sorted(allowed) == ["README.md", "exporter", "pyproject.toml"]
    assert not (ROOT / "exporter" / "lab").exists()
