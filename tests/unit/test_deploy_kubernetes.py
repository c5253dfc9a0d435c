"""The Kubernetes manifests (deploy/kubernetes): kustomization, kubernetes-validate's bundled
schemas, hardening, probes, the state volume, the exporters' environment a valid configuration,
secrets referenced never inlined, services and the ServiceMonitor.

Nothing here needs a Docker engine or a cluster (test_deploy_*.py; shared readers in
deploy_files.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter.config import ENV_PREFIX, ConfigError, load
from tests.unit.deploy_files import (
    ALLOWED_OTHER_ENV,
    CRDS,
    DEFAULT_PORT,
    DEPLOY_DOC,
    DURATION,
    EXPORTER_IMAGE,
    K8S_DIR,
    KNOWN_ENV,
    STATE_DIR_ENV,
    image_state_dir,
    image_user,
    pgbouncer_ini,
    yaml_docs,
)


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


def _manifests() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in yaml_docs(K8S_DIR / name)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _manifests() if d["kind"] == kind]


def _exporter_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(Deployment, container) of every exporter container."""
    for deployment in _of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] == EXPORTER_IMAGE:
                yield deployment, container


def test_kustomization_lists_every_manifest_and_generated_file() -> None:
    kustomization = _kustomization()
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S_DIR / name).is_file(), name
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator["files"]:
            assert (K8S_DIR / name).is_file(), name
    # prometheusrule.yaml is generated from alerts/: listed once it is committed, or applied
    # on its own
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests - {"prometheusrule.yaml"} <= set(resources) <= manifests
    assert [i["name"] for i in kustomization["images"]] == [EXPORTER_IMAGE]
    assert len(list(_exporter_containers())) == 2


def _kubernetes_validate() -> ModuleType:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (a test dependency in pyproject.toml)")


def _validate_builtin(docs: list[dict[str, Any]]) -> list[str]:
    """Validate every built-in kind strictly against the oldest and newest bundled schemas;
    returns the kinds that have no bundled schema (CRDs)."""
    kv = _kubernetes_validate()
    from kubernetes_validate.utils import (  # type: ignore[import-untyped]  # ships no hints
        all_versions,
    )

    versions = sorted({v for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
    crds = []
    for doc in docs:
        for version in (versions[0], versions[-1]):
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                crds.append(doc["kind"])
                break
            except kv.ValidationError as exc:
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} against "
                                     f"Kubernetes {version}: {exc}") from None
    return crds


def test_kubernetes_manifests_validate_against_kubernetes_schemas() -> None:
    crds = _validate_builtin(_manifests())
    assert "ServiceMonitor" in crds and set(crds) <= CRDS


def test_kustomize_build_validates_against_kubernetes_schemas() -> None:
    kustomize = shutil.which("kustomize")
    kubectl = shutil.which("kubectl")
    if kustomize:
        argv = [kustomize, "build", str(K8S_DIR)]
    elif kubectl:
        argv = [kubectl, "kustomize", str(K8S_DIR)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"].startswith("pgbouncer-config-")
    assert "pgbouncer.ini" in configmap["data"]
    images = {c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    newest = _kustomization()["images"][0]
    assert f"{newest.get('newName', EXPORTER_IMAGE)}:{newest['newTag']}" in images
    crds = _validate_builtin(docs)
    assert "ServiceMonitor" in crds and set(crds) <= CRDS


def test_kubernetes_deployments_are_hardened_and_bounded() -> None:
    for deployment in _of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            user = security.get("runAsUser", pod["securityContext"].get("runAsUser"))
            assert isinstance(user, int) and user > 0, f"{where}: runAsUser must be numeric"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, where
            assert "livenessProbe" in container, where


def test_kubernetes_exporter_probes_use_healthz_and_readyz() -> None:
    kinds = {}
    for deployment, container in _exporter_containers():
        others = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                  if c is not container]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": DEFAULT_PORT}
        live = container["livenessProbe"]["httpGet"]
        assert (live["path"], live["port"]) == ("/healthz", "metrics")
        if others:  # a sidecar: the pod's readiness must stay PgBouncer's own
            kinds["sidecar"] = container
            ready = container.get("readinessProbe", {}).get("httpGet", {})
            assert ready.get("path") != "/readyz"
        else:
            kinds["standalone"] = container
            ready = container["readinessProbe"]["httpGet"]
            assert (ready["path"], ready["port"]) == ("/readyz", "metrics")
    assert set(kinds) == {"sidecar", "standalone"}


def test_kubernetes_exporters_keep_incidents_on_a_writable_volume() -> None:
    image_dir = image_state_dir()[0]
    for deployment, container in _exporter_containers():
        where = f"{deployment['metadata']['name']}/{container['name']}"
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        path = env[STATE_DIR_ENV]
        assert path == image_dir, where
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
        assert not mount.get("readOnly"), where
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        # an emptyDir survives the container's restarts; bounded, as every volume here
        assert volume["emptyDir"]["sizeLimit"], where
        others = [m for c in pod["containers"] if c is not container
                  for m in c.get("volumeMounts", []) if m["name"] == mount["name"]]
        assert not others, f"{where}: the state volume is the exporter's alone"
        # the image's user writes it (an emptyDir is the pod's fsGroup's)
        user = container["securityContext"].get("runAsUser", pod["securityContext"]["runAsUser"])
        assert (user, pod["securityContext"]["fsGroup"]) == image_user(), where


def _dsn_example(setting: str) -> str:
    return {
        "PREFECT_PG_EXPORTER_POSTGRES_DSN_FILE":
            "postgresql://prefect_exporter:secret@postgres:5432/prefect",
        "PREFECT_PG_EXPORTER_PGBOUNCER_DSN_FILE":
            "postgresql://prefect_exporter:secret@127.0.0.1:6432/pgbouncer",
    }.get(setting, "user:password")


SECRET_EXAMPLES = {"redis-url": "messaging=redis://prefect-exporter:pw@redis:6379/0;"
                                "docket=redis://prefect-exporter:pw@redis:6379/1"}


def _container_environment(deployment: dict[str, Any], container: dict[str, Any],
                           tmp_path: Path) -> dict[str, str]:
    """The container's environment as the kubelet would make it, with placeholders for
    Secrets and the downward API, and *_FILE paths checked against the mounted Secrets."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(item["value"]))
        elif "secretKeyRef" in item["valueFrom"]:
            value = SECRET_EXAMPLES.get(item["valueFrom"]["secretKeyRef"]["key"],
                                        "user:password")
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = "pgbouncer-5d8f7c9b4-x2x7q"
        if name.endswith("_FILE"):
            mounted = [m for m in container["volumeMounts"]
                       if value.startswith(m["mountPath"].rstrip("/") + "/")]
            assert mounted, f"{name}={value} is not in a mounted volume"
            secret = volumes[mounted[0]["name"]]["secret"]
            key = os.path.relpath(value, mounted[0]["mountPath"])
            assert key in {i["path"] for i in secret["items"]}, f"{name}: {key} not mounted"
            file = tmp_path / key
            file.write_text(_dsn_example(name))
            value = str(file)
        env[name] = value
    return env


def test_kubernetes_exporter_environment_is_a_valid_configuration(tmp_path: Path) -> None:
    ini = pgbouncer_ini(K8S_DIR / "pgbouncer.ini")
    for deployment, container in _exporter_containers():
        pod = deployment["spec"]["template"]["spec"]
        # Service links would add PREFECT_PG_EXPORTER_SERVICE_HOST & co, which the exporter
        # refuses as unknown settings
        assert pod["enableServiceLinks"] is False
        env = _container_environment(deployment, container, tmp_path)
        names = set(env)
        unknown = {n for n in names if n.startswith(ENV_PREFIX) and n not in KNOWN_ENV}
        assert not unknown, f"unknown exporter settings: {unknown}"
        assert {n for n in names if not n.startswith(ENV_PREFIX)} <= ALLOWED_OTHER_ENV
        try:
            config = load({}, environ=env)
        except ConfigError as exc:
            raise AssertionError(f"{deployment['metadata']['name']}: {exc}") from None
        assert config.listen.port == DEFAULT_PORT
        if len(pod["containers"]) > 1:
            assert config.sources == ("pgbouncer",)
            (target,) = config.pgbouncer_targets
            assert target.name == "pgbouncer-5d8f7c9b4-x2x7q", "named after the pod"
            assert (target.params["host"], target.params["port"]) == (
                "127.0.0.1", ini["pgbouncer"]["listen_port"])
            assert target.params["user"] in ini["pgbouncer"]["stats_users"]
            bouncer = next(c for c in pod["containers"] if c is not container)
            assert {p["containerPort"] for p in bouncer["ports"]} == {
                int(ini["pgbouncer"]["listen_port"])}
        else:
            assert config.sources == ("postgres", "prefect", "redis")


def test_kubernetes_secrets_are_referenced_never_inlined() -> None:
    assert not _of_kind("Secret")
    referenced: set[tuple[str, str]] = set()
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for item in container.get("env", []):
                if "value" in item:
                    assert not re.search(r"://[^/@:]+:[^@]+@", str(item["value"])), item
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            sources = [volume] if "secret" in volume else [
                s for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
            for source in sources:
                secret = source["secret"]
                name = secret.get("secretName", secret.get("name"))
                referenced |= {(name, i["key"]) for i in secret["items"]}
    assert referenced
    doc = DEPLOY_DOC.read_text()
    for name, key in referenced:
        assert name in doc and key in doc, f"docs/deploy.md does not say how to create {name}/{key}"


def test_kubernetes_services_and_servicemonitor_select_the_exporters() -> None:
    deployments = _of_kind("Deployment")
    services = _of_kind("Service")
    for service in services:
        selector = service["spec"]["selector"]
        pods = [d["spec"]["template"] for d in deployments
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, service["metadata"]["name"]
        ports = {p["name"] for c in pods[0]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]
    (monitor,) = _of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in selected} == {"prefect-pg-exporter",
                                                         "pgbouncer-metrics"}
    # pools are per PgBouncer process: every pod is scraped, through a headless Service
    sidecar = next(s for s in selected if s["metadata"]["name"] == "pgbouncer-metrics")
    assert sidecar["spec"]["clusterIP"] == "None"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels",
                             "relabelings", "metricRelabelings", "scheme"}
    for key in ("interval", "scrapeTimeout"):
        assert DURATION.match(endpoint[key]), endpoint[key]
