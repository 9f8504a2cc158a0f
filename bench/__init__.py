"""minidevin benchmarks: a real server on loopback, a scripted model, a baseline per figure.

Run them all with `.venv/bin/python -m bench` (`--quick`, `--only NAME`, `--out PATH`).
Benchmarks print figures; they are not tests and never fail the build.
"""
