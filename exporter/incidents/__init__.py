"""Incidents: what happened, kept with its evidence after it is gone.

Each source kind says what an incident is in its snapshots (exporter/<kind>/incidents.py, pure,
with the doctor's thresholds); tracker.py follows them across polls (begin, update when worse,
end, storms coalesced); journal.py turns that into log events under a rate limit; fingerprint.py
masks the statements of the sessions involved; render.py shows the recent ones on the landing
page and in `doctor --since`, which asks a running exporter for them (remote.py).
"""
