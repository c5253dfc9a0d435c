"""The lab: real servers on loopback in a temporary directory, for the tests and the demo.

PostgreSQL and PgBouncer refuse to run as root, and CI runs as root, so when the lab runs as root
its servers run as an unprivileged user (`postgres` if it exists, else one it creates).
"""
