"""prefect-pg-exporter: see what chokes a self-hosted Prefect's database, and why."""

__version__ = "0.1.0"
