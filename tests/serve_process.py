"""`minidevin serve` as a real subprocess, for shutdown and crash tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from waiting import wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`minidevin serve` on `data_dir` with `env` over a clean environment; on the
    PostgreSQL database at `database_url` when one is given (else SQLite in `data_dir`)."""

    def __init__(
        self, data_dir: Path, env: dict[str, str], database_url: str | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MINIDEVIN_")},
            "MINIDEVIN_RATE_LIMIT_AUTHENTICATED": "0",
            "MINIDEVIN_RATE_LIMIT_ANONYMOUS": "0",
            "MINIDEVIN_LOG_FORMAT": "json",
            **({"MINIDEVIN_DATABASE_URL": database_url} if database_url else {}),
            **env,
        }
        self.env = full_env  # (what it runs with: its database URL, its node id)
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minidevin.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
            ],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 30) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, timeout, what="serve to come up", interval=0.05)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers or {}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 30) -> int:
        """A graceful shutdown (SIGTERM, as a supervisor stops it): its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.log.close()

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]
