"""MCP tool servers a session plugs in: their configuration (`config.py`) and the
connections a task holds to them while it runs."""
