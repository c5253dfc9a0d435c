"""A real Prometheus on 127.0.0.1 scraping the exporter, with a rule file of our choosing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx

from lab.common import (
    LabError,
    dies_with_parent,
    find_binary,
    free_port,
    stop_process,
    wait_for_http,
)


class LabPrometheus:
    def __init__(self, root: Path, scrape_port: int, rules: Path | None = None,
                 interval_seconds: float = 1.0, scrape_configs: str | None = None) -> None:
        """scrape_configs: a `scrape_configs:` YAML block instead of one job on /metrics."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = root / "prometheus.log"
        interval = f"{interval_seconds:g}s"
        rule_files = f"rule_files: ['{rules}']\n" if rules else ""
        self.config = root / "prometheus.yml"
        self.config.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"{rule_files}"
            + (scrape_configs or
               f"scrape_configs:\n  - job_name: prefect-pg-exporter\n"
               f"    static_configs:\n      - targets: ['127.0.0.1:{scrape_port}']\n"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self._proc = subprocess.Popen(
            [find_binary("prometheus"), f"--config.file={self.config}",
             f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=dies_with_parent())
        wait_for_http(f"{self.url}/-/ready", timeout, "prometheus", self._proc, self.log)

    def stop(self) -> None:
        stop_process(self._proc)

    async def query(self, expr: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise LabError(f"query {expr!r} failed: {body.get('error', response.text)}")
        data: dict[str, Any] = body["data"]
        return data

    async def firing(self) -> dict[str, list[dict[str, Any]]]:
        """Firing alerts by name, each with its labels and annotations."""
        async with httpx.AsyncClient(timeout=10) as client:
            alerts = (await client.get(f"{self.url}/api/v1/alerts")).json()["data"]["alerts"]
        result: dict[str, list[dict[str, Any]]] = {}
        for alert in alerts:
            if alert["state"] == "firing":
                result.setdefault(alert["labels"]["alertname"], []).append(alert)
        return result
