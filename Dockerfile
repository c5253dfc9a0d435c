# syntax=docker/dockerfile:1
# prefect-pg-exporter container image.
#
#   docker build -t prefect-pg-exporter .
#   docker run --rm -p 10816:10816 \
#     -e PREFECT_PG_EXPORTER_POSTGRES_DSN='postgresql://prefect_exporter@db:5432/prefect' \
#     -e PGPASSWORD=... prefect-pg-exporter
#
# Configuration is by environment only: the PREFECT_PG_EXPORTER_* variables of the README's
# configuration table (and Prefect's own PREFECT_API_URL / PREFECT_API_KEY /
# PREFECT_API_AUTH_STRING). Secrets: *_FILE variables pointing at mounted files, or PGPASSWORD.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: one wheel for the exporter and one for every dependency ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# Every dependency ships binary wheels for linux/amd64 and linux/arm64: nothing is compiled.
RUN pip wheel --wheel-dir /wheels .

# ---- final: the wheels installed offline, no compiler, no build tools, non-root ----------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="prefect-pg-exporter" \
      org.opencontainers.image.description="Prometheus exporter for self-hosted Prefect 3 on PostgreSQL and PgBouncer" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A named user with a numeric id: Kubernetes' runAsNonRoot can check it, and libpq / asyncpg
# can look the user up (they ask for the OS user name when a DSN names none). Its state
# directory (PREFECT_PG_EXPORTER_STATE_DIR, the incidents across restarts) is the user's: a
# named volume mounted there starts as a copy of it, owner included.
RUN groupadd --system --gid 65532 exporter \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin exporter \
 && install --directory --owner 65532 --group 65532 --mode 0700 /var/lib/prefect-pg-exporter
# The wheels are bind-mounted from the build stage, never copied into a layer. The only
# version there is the one just built: nothing to pin (DL3013).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels prefect-pg-exporter \
 && prefect-pg-exporter --version
USER 65532:65532
EXPOSE 10816
# No curl in the slim image: the exporter asks its own /healthz, on the port of
# PREFECT_PG_EXPORTER_LISTEN_ADDRESS (default 0.0.0.0:10816), over TLS when the web config says so.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["prefect-pg-exporter", "healthcheck"]
ENTRYPOINT ["prefect-pg-exporter"]
