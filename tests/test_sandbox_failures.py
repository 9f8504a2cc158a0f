"""`minidevin_sandbox_failures_total`: sandboxed commands that could not be set up as asked.

Each case runs the real terminal tool under the real sandbox in a child process
whose machine is broken for real, in a mount namespace of its own where
`/dev/net/tun` is `/dev/null` (user-mode networking cannot make its tap device):
from the start (`no_network`: the command runs with no network and says so), or
after the network worked once (`network`: the command is refused); and a file
descriptor limit that leaves no room for the command's pipes (`start`). The
child prints what the commands said and the counter's samples.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from minidevin.runtime.tools.network import network_status
from minidevin.runtime.tools.sandbox import sandbox_status

pytestmark = pytest.mark.skipif(
    not (os.geteuid() == 0 and sandbox_status().works and shutil.which("unshare")),
    reason="needs root (a mount namespace) and a working bubblewrap",
)

CHILD = r"""
import json, os, resource, sys
from pathlib import Path
from minidevin.runtime import metrics
from minidevin.runtime.tools.base import ToolContext
from minidevin.runtime.tools.terminal import TerminalTool

work = Path(sys.argv[1])
os.chown(work, 65534, 65534)
context = ToolContext(
    working_directory=work, sandbox=True, network=True, uid=65534, gid=65534
)

def failures():
    return {
        sample.labels["stage"]: sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == "minidevin_sandbox_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    }

online = TerminalTool().run({"command": "cat /proc/net/dev"}, context)
after_online = failures()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
offline = ToolContext(
    working_directory=work, sandbox=True, network=False, uid=65534, gid=65534
)
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 2, hard))
try:
    TerminalTool().run({"command": "true"}, offline)
    started = "started"
except Exception as exc:
    started = f"{type(exc).__name__}: {exc}"
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(json.dumps({
    "online": {"success": online.success, "output": online.output},
    "after_online": after_online,
    "started": started,
    "after_start": failures(),
}))
"""


# The network works when the server starts (its probe passes), then the tap device goes.
LATER = r"""
import ctypes, json, os, subprocess, sys
from pathlib import Path
from minidevin.runtime import metrics
from minidevin.runtime.tools.base import ToolContext, ToolError
from minidevin.runtime.tools.terminal import TerminalTool

work = Path(sys.argv[1])
os.chown(work, 65534, 65534)
context = ToolContext(working_directory=work, sandbox=True, network=True, uid=65534, gid=65534)
first = TerminalTool().run({"command": "true"}, context)
assert ctypes.CDLL(None, use_errno=True).unshare(0x00020000) == 0  # CLONE_NEWNS
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "--bind", "/dev/null", "/dev/net/tun"], check=True)
try:
    TerminalTool().run({"command": "true"}, context)
    second = "ran"
except ToolError as exc:
    second = str(exc)
counted = {
    sample.labels["stage"]: sample.value
    for family in metrics.REGISTRY.collect()
    if family.name == "minidevin_sandbox_failures"
    for sample in family.samples
    if sample.name.endswith("_total")
}
print(json.dumps({"first": first.output, "second": second, "counted": counted}))
"""


def run_broken_child(work: Path) -> dict[str, Any]:
    shell = 'mount --bind /dev/null /dev/net/tun && exec "$0" -c "$1" "$2"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", shell]
    done = subprocess.run(
        [*argv, sys.executable, CHILD, str(work)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_commands_the_sandbox_could_not_set_up_are_counted_by_stage(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    seen = run_broken_child(work)
    online = seen["online"]
    # asked for a network it could not have: it ran with none at all, and said so
    assert online["success"], online
    assert "[note: this command had no network" in online["output"], online
    assert re.findall(r"^\s*([\w.-]+):\s+\d", online["output"], re.MULTILINE) == ["lo"], online
    assert seen["after_online"] == {"no_network": 1.0}
    # a command whose process could not be started at all
    assert seen["started"].startswith("ToolError: could not start the command"), seen
    assert seen["after_start"] == {"no_network": 1.0, "start": 1.0}


@pytest.mark.skipif(not network_status()[0], reason="user-mode networking does not work here")
def test_a_network_that_fails_after_the_probe_is_counted(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", LATER, str(work)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "no network" not in seen["first"], seen  # the probe passed; the network worked
    assert seen["second"].startswith("could not set up the command's network"), seen
    assert seen["counted"] == {"network": 1.0}, seen
