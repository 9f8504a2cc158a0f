"""MCP servers the tests start: written with the `mcp` SDK, run with the test's Python."""
