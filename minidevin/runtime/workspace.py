"""Working-directory checks and the before/after snapshots behind `diff.patch`.

Snapshots live in a private git directory under the data directory (one per
task), so the user's own repository is never touched: `git add -A` into a
throwaway index records the tree as it stood, and the diff at the end is
`git diff --binary <before> <after>`, which `git apply` accepts. The work
tree's `.gitignore` files are honoured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

GIT_TIMEOUT = 120


class WorkspaceError(Exception):
    """A working directory that does not exist or is not allowed."""

    def __init__(self, message: str, code: str = "VALIDATION_ERROR") -> None:
        super().__init__(message)
        self.code = code


def resolve_working_directory(raw: str, roots: tuple[Path, ...]) -> Path:
    """The resolved directory; `WorkspaceError` if missing or outside every root."""
    if "\0" in raw:
        raise WorkspaceError("working_directory must not contain NUL bytes")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise WorkspaceError("working_directory must be an absolute path")
    resolved = path.resolve()
    if roots and not any(resolved.is_relative_to(root) for root in roots):
        raise WorkspaceError(
            "working_directory is outside the allowed workspace roots", code="FORBIDDEN"
        )
    if not resolved.is_dir():
        raise WorkspaceError(f"working_directory {raw!r} is not an existing directory")
    return resolved


class Snapshots:
    """Snapshots of one working directory into one private git directory."""

    def __init__(self, working_directory: Path, git_dir: Path) -> None:
        self.working_directory = working_directory
        self.git_dir = git_dir

    def _git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_DIR": str(self.git_dir),
            "GIT_WORK_TREE": str(self.working_directory),
            "GIT_INDEX_FILE": str(self.git_dir / "snapshot-index"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
        done = subprocess.run(
            ["git", "-c", "core.autocrlf=false", "-c", "core.quotepath=off", *args],
            cwd=self.working_directory,
            env=env,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode(errors="replace")

    def take(self) -> str:
        """Record the working tree; returns the tree id."""
        if not (self.git_dir / "HEAD").exists():
            self.git_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "--quiet", "--bare", str(self.git_dir)],
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=True,
            )
            # never record the user's repository itself, nor bytecode caches
            (self.git_dir / "info").mkdir(exist_ok=True)
            (self.git_dir / "info" / "exclude").write_text(".git\n__pycache__/\n*.py[co]\n")
        self._git("add", "--all", ".")
        return self._git("write-tree").strip()

    def diff(self, before: str, after: str) -> str:
        return self._git("diff", "--binary", "--no-color", "--no-ext-diff", before, after)

    def discard(self) -> None:
        shutil.rmtree(self.git_dir, ignore_errors=True)
