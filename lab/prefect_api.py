"""Just enough of Prefect's REST API to set up the lab's scenarios (tests and demo), with httpx.

The same calls and bodies work on 2.20 and every 3.x the lab runs. On a server with CSRF
protection on, a token is fetched once (the lab's calls take far less than its hour).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx


class PrefectAPI:
    def __init__(self, api_url: str, auth: tuple[str, str] | None = None,
                 csrf: bool = False) -> None:
        self.client = httpx.AsyncClient(base_url=api_url + "/", auth=auth, timeout=30)
        self._csrf = csrf

    async def _csrf_headers(self) -> None:
        client = f"lab-{uuid.uuid4()}"
        response = await self.client.get("csrf-token", params={"client": client})
        response.raise_for_status()
        self.client.headers.update({"Prefect-Csrf-Token": response.json()["token"],
                                    "Prefect-Csrf-Client": client})
        self._csrf = False

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        if self._csrf and method != "GET":
            await self._csrf_headers()
        response = await self.client.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    async def work_pool(self, name: str) -> None:
        await self._json("POST", "work_pools/", {"name": name, "type": "process"})

    async def deployment(self, pool: str, name: str) -> str:
        flow = await self._json("POST", "flows/", {"name": f"flow-{name}"})
        deployment = await self._json("POST", "deployments/", {
            "name": name, "flow_id": flow["id"], "work_pool_name": pool,
            # a flow without parameters; 3.1 refuses runs of a deployment with no schema
            "parameter_openapi_schema": {"type": "object", "properties": {}}})
        return str(deployment["id"])

    async def work_queue(self, pool: str, name: str) -> None:
        await self._json("POST", f"work_pools/{pool}/queues", {"name": name})

    async def local_deployment(self, pool: str, name: str, entrypoint: str, directory: str,
                               queue: str = "default") -> str:
        """A deployment of flow code on this machine: the worker's flow-run process changes to
        `directory` (a pull step) and loads `entrypoint` (file.py:function) from there."""
        flow = await self._json("POST", "flows/", {"name": entrypoint.rsplit(":", 1)[-1]})
        deployment = await self._json("POST", "deployments/", {
            "name": name, "flow_id": flow["id"], "work_pool_name": pool,
            "work_queue_name": queue, "entrypoint": entrypoint, "path": directory,
            "pull_steps": [{"prefect.deployments.steps.set_working_directory":
                            {"directory": directory}}],
            "parameter_openapi_schema": {"type": "object", "properties": {}}})
        return str(deployment["id"])

    async def run_now(self, deployment_id: str, parameters: dict[str, Any] | None = None) -> str:
        """A run of the deployment, SCHEDULED to start now: a worker polling its queue takes
        it."""
        run = await self._json("POST", f"deployments/{deployment_id}/create_flow_run",
                               {"parameters": parameters or {}})
        return str(run["id"])

    async def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"flow_runs/{run_id}"))

    async def heartbeats(self, run_id: str) -> list[datetime]:
        """When the run's heartbeat events occurred, as persisted: the oldest first."""
        page = await self._json("POST", "events/filter", {
            "filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                       "resource": {"id": [f"prefect.flow-run.{run_id}"]},
                       "order": "ASC"},
            "limit": 50})
        return [datetime.fromisoformat(e["occurred"]) for e in page["events"]]

    async def read_global_concurrency_limit(self, name: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"v2/concurrency_limits/{name}"))

    async def scheduled_run(self, deployment_id: str, offset: timedelta) -> str:
        when = (datetime.now(UTC) + offset).isoformat()
        run = await self._json("POST", f"deployments/{deployment_id}/create_flow_run", {
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": when}}})
        return str(run["id"])

    async def set_state(self, run_id: str, state_type: str) -> None:
        await self._json("POST", f"flow_runs/{run_id}/set_state",
                         {"state": {"type": state_type}, "force": True})

    async def heartbeat(self, pool: str, worker: str) -> None:
        await self._json("POST", f"work_pools/{pool}/workers/heartbeat",
                         {"name": worker, "heartbeat_interval_seconds": 30})

    async def poll_queues(self, pool: str) -> None:
        """What a worker does every poll: asks for the pool's due runs, which stamps its queues'
        last_polled and makes them (and their deployments) READY."""
        await self._json("POST", f"work_pools/{pool}/get_scheduled_flow_runs", {})

    async def flow_run_heartbeat(self, run_id: str) -> None:
        """The event a running flow's engine sends (Prefect 3.6.22+), through the events API."""
        await self._json("POST", "events", [{
            "id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
            "event": "prefect.flow-run.heartbeat",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}}])

    async def pause_pool(self, pool: str, paused: bool = True) -> None:
        await self._json("PATCH", f"work_pools/{pool}", {"is_paused": paused})

    async def set_pool_limit(self, pool: str, limit: int) -> None:
        await self._json("PATCH", f"work_pools/{pool}", {"concurrency_limit": limit})

    async def set_queue_limit(self, pool: str, queue: str, limit: int) -> None:
        await self._json("PATCH", f"work_pools/{pool}/queues/{queue}", {"concurrency_limit": limit})

    async def global_concurrency_limit(self, name: str, limit: int) -> None:
        await self._json("POST", "v2/concurrency_limits/", {"name": name, "limit": limit})

    async def post(self, path: str, body: Any) -> Any:
        return await self._json("POST", path, body)

    async def count(self, body: dict[str, Any]) -> int:
        return int(await self._json("POST", "flow_runs/count", body))

    async def close(self) -> None:
        await self.client.aclose()

    # ---- scheduling and load (services and growth lab tests) -------------------------------

    async def flow(self, name: str) -> str:
        """The flow of that name (Prefect returns the existing one when it is there)."""
        return str((await self._json("POST", "flows/", {"name": name}))["id"])

    async def interval_deployment(self, pool: str, name: str, seconds: float) -> str:
        """A deployment with one active interval schedule: Prefect's scheduler service keeps
        future runs of it (tagged auto-scheduled), which nothing else creates."""
        deployment = await self._json("POST", "deployments/", {
            "name": name, "flow_id": await self.flow(f"flow-{name}"), "work_pool_name": pool,
            "parameter_openapi_schema": {"type": "object", "properties": {}},
            "schedules": [{"schedule": {"interval": seconds}, "active": True}]})
        return str(deployment["id"])

    async def create_flow_run(self, flow_id: str, name: str, state_type: str = "PENDING") -> str:
        """A flow run of no deployment, created in that state."""
        run = await self._json("POST", "flow_runs/", {"flow_id": flow_id, "name": name,
                                                       "state": {"type": state_type}})
        return str(run["id"])

    async def logs(self, run_id: str, messages: list[str]) -> None:
        """Log lines of a flow run, in one request, as a flow's log handler sends them."""
        now = datetime.now(UTC).isoformat()
        await self._json("POST", "logs/", [
            {"name": "lab", "level": 20, "message": message, "timestamp": now,
             "flow_run_id": run_id} for message in messages])
