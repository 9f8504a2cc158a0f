"""`minidevin serve` (the REST + WebSocket server), `minidevin run` (one task, live) and
`minidevin db vacuum|migrate|copy` (the database offline: reclaim free space, bring the
schema up to date, copy an embedded installation into PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minidevin import __version__

if TYPE_CHECKING:
    from minidevin.runtime.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minidevin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"minidevin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the REST + WebSocket server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    run = commands.add_parser(
        "run", help="run one task in this process and show it live", formatter_class=_RunHelp
    )
    run.add_argument("task", nargs="?", help="what the agent should do (not with --resume)")
    run.add_argument("--dir", help="the working directory (a repository; not with --resume)")
    run.add_argument("--model", help="model id, e.g. gpt-4o or replay:PATH/trajectory.json")
    run.add_argument(
        "--max-iterations",
        type=_iterations,
        help="model turns at most (1-1000); with --resume, how many more",
    )
    run.add_argument(
        "--max-cost-usd", type=_cost, help="cost budget in USD; with --resume, how much more"
    )
    run.add_argument(
        "--resume",
        metavar="TASK_ID",
        help="continue a failed or stopped task of the data directory (same id, its "
        "conversation rebuilt from its log; more iterations: --max-iterations, default "
        "as many as it was created with; the summary of a failed run names its id)",
    )
    run.add_argument(
        "--message", help="with --resume: a message for the model before its next turn"
    )
    run.add_argument(
        "--approval-policy",
        choices=("never", "risky", "always"),
        default="never",
        help="which tool calls wait for your approval at the terminal (risky: changes and "
        "commands that are not read-only; y approves, anything else rejects, with it as "
        "the reason)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON event per line")
    run.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    db = commands.add_parser("db", help="maintain the data directory's database (offline)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    vacuum = db_commands.add_parser(
        "vacuum",
        help="reclaim the space of deleted rows (while no server uses the data directory)",
    )
    vacuum.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    migrate = db_commands.add_parser(
        "migrate",
        help="bring the database's schema up to date and say its version (PostgreSQL when "
        "MINIDEVIN_DATABASE_URL is set, else SQLite in the data directory)",
    )
    migrate.add_argument("--data-dir", help="database, artifacts and secrets (default ./data)")
    copy = db_commands.add_parser(
        "copy",
        help="copy an embedded installation's SQLite database into an empty PostgreSQL "
        "database (while no server uses its data directory); artifact files, the secrets "
        "key and the JWT secret stay in the data directory, for the PostgreSQL-backed server",
    )
    copy.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="sqlite:///PATH",
        help="the SQLite database (DATA_DIR/minidevin.sqlite3, or its data directory)",
    )
    copy.add_argument(
        "--to",
        metavar="postgresql://...",
        help="the PostgreSQL database (default MINIDEVIN_DATABASE_URL, which keeps a password "
        "out of the process list)",
    )
    args = parser.parse_args(argv)
    if args.command == "run" and (problem := _run_arguments_problem(args)):
        run.error(problem)
    from minidevin.runtime.auth import SecretFileError
    from minidevin.runtime.data_lock import DataDirInUse
    from minidevin.runtime.storage.interface import StoreError

    try:
        if args.command == "serve":
            return serve_command(args)
        if args.command == "run":
            from minidevin.run_command import run_command

            return run_command(args)
        if args.command == "db":
            commands_of_db = {
                "vacuum": db_vacuum_command,
                "migrate": db_migrate_command,
                "copy": db_copy_command,
            }
            return commands_of_db[args.db_command](args)
    # another process owns the data directory, the store cannot be opened (locked, read-only,
    # corrupt), the secret file is damaged: one line, exit 1 (a supervisor sees it and retries)
    except (DataDirInUse, StoreError, SecretFileError) as exc:
        print(f"minidevin: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 2


def _settings(**options: Any) -> Settings | None:
    """The settings from the environment, with the command's `options` that were given;
    None after one line on stderr saying why they cannot be read."""
    from minidevin.runtime.settings import Settings, SettingsError

    try:
        return Settings.from_env(**{k: v for k, v in options.items() if v is not None})
    except SettingsError as exc:
        print(f"minidevin: {exc}", file=sys.stderr)
        return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class _RunHelp(argparse.HelpFormatter):
    """`run --help` with the defaults this environment gives (worked out only for help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.dest in ("model", "max_iterations"):
            from minidevin.run_command import default_help

            if extra := default_help()[action.dest]:
                text += f" ({extra})".replace("%", "%%")
        return text


def _run_arguments_problem(args: argparse.Namespace) -> str | None:
    """Why `minidevin run`'s arguments do not go together (None: they do)."""
    if args.resume is not None:
        given = [name for name in ("task", "dir", "model") if getattr(args, name) is not None]
        if given:
            shown = ["a task description" if name == "task" else f"--{name}" for name in given]
            return f"--resume continues a task as it was: not with {', '.join(shown)}"
        return None
    if args.message is not None:
        return "--message goes with --resume"
    if args.task is None or args.dir is None:
        return "a task description and --dir are required (or --resume TASK_ID)"
    return None


def _cost(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be above 0 and at most 1000000")
    return value


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def serve_command(args: argparse.Namespace) -> int:
    from minidevin.api import Runtime
    from minidevin.http.app import create_app
    from minidevin.runtime.logging import configure_logging

    settings = _settings(host=args.host, port=args.port, data_dir=args.data_dir)
    if settings is None:
        return 2
    try:  # first of all: a busy port is one line, with nothing started, logged or changed
        listeners = _listen(settings.host, settings.port)
    except OSError as exc:
        where = f"[{settings.host}]" if ":" in settings.host else settings.host
        reason = (exc.strerror or str(exc)).lower()
        print(f"minidevin: cannot listen on {where}:{settings.port}: {reason}", file=sys.stderr)
        return 1
    try:
        configure_logging(settings.log_level, settings.log_format)
        asyncio.run(_serve(create_app(Runtime(settings)), settings, listeners))
    finally:
        for sock in listeners:
            sock.close()
    return 0


def db_vacuum_command(args: argparse.Namespace) -> int:
    """`minidevin db vacuum`: checkpoint and `VACUUM` the database, holding the data
    directory's lock (`DataDirInUse` while a server or `run` holds it)."""
    import sqlite3

    from minidevin.runtime.data_lock import DataDirLock
    from minidevin.runtime.storage.sqlite_retention import database_bytes, vacuum

    settings = _settings(data_dir=args.data_dir)
    if settings is None:
        return 2
    if settings.database_url is not None:  # (PostgreSQL reclaims space itself: autovacuum)
        print(
            "minidevin: db vacuum is for the embedded SQLite store; MINIDEVIN_DATABASE_URL "
            "names PostgreSQL, whose autovacuum (or VACUUM FULL) does this",
            file=sys.stderr,
        )
        return 1
    path = settings.database_path
    if not path.is_file():
        print(f"minidevin: no database at {path}", file=sys.stderr)
        return 1
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    try:
        before = database_bytes(path)
        try:
            vacuum(path)
        except sqlite3.Error as exc:
            print(f"minidevin: cannot vacuum {path}: {_one_line(exc)}", file=sys.stderr)
            return 1
        after = database_bytes(path)
    finally:
        lock.release()
    print(f"{path}: {before} bytes before, {after} bytes after ({before - after} reclaimed)")
    return 0


def db_migrate_command(args: argparse.Namespace) -> int:
    """`minidevin db migrate`: apply the store's missing migrations (PostgreSQL at
    `MINIDEVIN_DATABASE_URL`, else SQLite in the data directory, under its lock) and print
    the schema version; one line and exit 1 when it cannot (unreachable, newer schema)."""
    from minidevin.runtime.data_lock import DataDirLock
    from minidevin.runtime.storage.schema_upgrade import upgrade_postgres, upgrade_sqlite

    settings = _settings(data_dir=args.data_dir)
    if settings is None:
        return 2
    _quiet_logging(settings.log_format)
    if settings.database_url:
        upgrade = asyncio.run(upgrade_postgres(settings.database_url))
    else:
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
        try:
            upgrade = asyncio.run(
                upgrade_sqlite(settings.database_path, retry_seconds=settings.store_retry_seconds)
            )
        finally:
            lock.release()
    print(upgrade.summary())
    return 0


def db_copy_command(args: argparse.Namespace) -> int:
    """`minidevin db copy --from sqlite:///PATH [--to postgresql://...]`: copy the SQLite
    database (migrated first if older) into an empty PostgreSQL database, holding the
    source's data directory lock (`DataDirInUse` while a server or `run` holds it)."""
    import re

    from minidevin.runtime.data_lock import DataDirLock
    from minidevin.runtime.storage.schema_upgrade import sqlite_version, upgrade_sqlite
    from minidevin.runtime.storage.sqlite_schema import SCHEMA_VERSION
    from minidevin.runtime.storage.sqlite_to_postgres import (
        copy_sqlite_to_postgres,
        describe_report,
    )

    settings = _settings()
    if settings is None:
        return 2
    url, url_name = (
        (args.to, "--to") if args.to else (settings.database_url, "MINIDEVIN_DATABASE_URL")
    )
    if not url or not re.match(r"^postgres(ql)?://", url):
        print(
            "minidevin: db copy needs the target as --to postgresql://user@host:port/database "
            "(or MINIDEVIN_DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    path = _sqlite_source(args.source)
    if not path.is_file():
        print(f"minidevin: no database at {path}", file=sys.stderr)
        return 1
    _quiet_logging(settings.log_format)
    lock = DataDirLock(path.parent)
    lock.acquire()
    try:
        if sqlite_version(path) < SCHEMA_VERSION:  # (as a server's start would)
            asyncio.run(upgrade_sqlite(path, retry_seconds=settings.store_retry_seconds))
        report = asyncio.run(copy_sqlite_to_postgres(path, url, url_name=url_name))
    finally:
        lock.release()
    print("\n".join(describe_report(report)))
    return 0


def _sqlite_source(text: str) -> Path:
    """The SQLite file `--from` names: sqlite:///PATH (or a plain path; a directory means
    its minidevin.sqlite3)."""
    from urllib.parse import unquote

    if text.startswith("sqlite:"):
        text = unquote(text.removeprefix("sqlite:").removeprefix("//"))
    path = Path(text).expanduser().resolve()
    return path / "minidevin.sqlite3" if path.is_dir() else path


def _quiet_logging(log_format: str) -> None:
    """Only warnings and errors go to stderr (the command's own lines say what it did)."""
    from minidevin.runtime.logging import configure_logging

    configure_logging("warning", log_format)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on each address of `host` (all interfaces when empty), as asyncio's
    `create_server` would open them; `OSError` when one cannot be had."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    continue  # a family this machine lacks (IPv6 off), as asyncio skips it
                raise
            listeners.append(sock)
            sock.listen(128)  # now: a port merely bound could still be bound by another
        if not listeners:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


async def _serve(app: Any, settings: Any, listeners: list[socket.socket]) -> None:
    """Serve `app` on `listeners` until SIGTERM or SIGINT, with the limits of `settings`."""
    import structlog
    from aiohttp import web

    from minidevin.http.connections import guarded_runner

    runner = guarded_runner(app, settings, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        sites = [web.SockSite(runner, sock) for sock in listeners]
        for site in sites:
            await site.start()
        urls = [site.name for site in sites]
        structlog.get_logger("minidevin.cli").info("server_listening", url=urls[0], urls=urls)
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
