"""`minidevin serve` (the REST + WebSocket server) and `minidevin run` (one task, live)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from minidevin import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minidevin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"minidevin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the REST + WebSocket server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    run = commands.add_parser("run", help="run one task in this process and show it live")
    run.add_argument("task", help="what the agent should do")
    run.add_argument("--dir", required=True, help="the working directory (a repository)")
    run.add_argument("--model", help="model id, e.g. gpt-4o or replay:PATH/trajectory.json")
    run.add_argument("--max-iterations", type=_iterations, help="model turns at most (1-1000)")
    run.add_argument("--json", action="store_true", help="print one JSON event per line")
    run.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    args = parser.parse_args(argv)
    from minidevin.runtime.data_lock import DataDirInUse

    try:
        if args.command == "serve":
            return serve_command(args)
        if args.command == "run":
            from minidevin.run_command import run_command

            return run_command(args)
    except DataDirInUse as exc:  # another process owns the data directory: one line, exit 1
        print(f"minidevin: {exc}", file=sys.stderr)
        return 1
    return 2


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def serve_command(args: argparse.Namespace) -> int:
    import structlog
    from aiohttp import web

    from minidevin.api import Runtime
    from minidevin.http.app import create_app
    from minidevin.runtime.logging import configure_logging
    from minidevin.runtime.settings import Settings, SettingsError

    overrides = {
        name: value
        for name, value in (("host", args.host), ("port", args.port), ("data_dir", args.data_dir))
        if value is not None
    }
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as exc:
        print(f"minidevin: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("minidevin.cli")
    app = create_app(Runtime(settings))

    async def announce(app: web.Application) -> None:
        log.info("server_listening", url=f"http://{settings.host}:{settings.port}")

    app.on_startup.append(announce)
    asyncio.run(_serve(app, settings))
    return 0


async def _serve(app: Any, settings: Any) -> None:
    """Serve `app` until SIGTERM or SIGINT, with the connection limits of `settings`."""
    from aiohttp import web

    from minidevin.http.connections import guarded_runner

    runner = guarded_runner(app, settings, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
