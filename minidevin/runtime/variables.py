"""Which environment variables a user may set (session secrets, an MCP server's `env`).

A leaf module (no imports of ours): the request schemas check names with it.
"""

from __future__ import annotations

# names a user's variables (session secrets, an MCP server's `env`) may not take: the
# loader's and libc's (glibc drops them for setuid programs), the shells' start-up hooks,
# the lookup path, and our own marker. The sandbox's helpers (`sh`, `prlimit`, `bwrap`,
# `setpriv`) start as root with the command's environment.
UNSAFE_NAMES = frozenset(
    ("GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
     "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR", "BASH_ENV",
     "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "PATH", "CDPATH")
)  # fmt: skip
UNSAFE_PREFIXES = ("LD_", "MALLOC_", "MINIDEVIN_", "BASH_FUNC_")


def unsafe_name(name: str) -> bool:
    """Whether a user's variable may not be called `name` (see `UNSAFE_NAMES`)."""
    return name.upper() in UNSAFE_NAMES or name.upper().startswith(UNSAFE_PREFIXES)
