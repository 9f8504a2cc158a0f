"""Which tool calls wait for a person's approval, and why (`approval_policy`).

- `never`: none (the default).
- `always`: every terminal, editor and MCP tool call.
- `risky`: editor changes (`view` does not wait), MCP tool calls (a server's own
  claims about its tools are not trusted), and terminal commands, except a command
  that only reads: one whose every part is on the read-only allowlist below.

How a command is judged read-only (anything else waits):
1. It is refused outright if it holds a character bash would treat in ways a
   plain split cannot see: `$` and backquotes (expansions and substitutions), `#`
   (a comment hides the rest from a parser, not from bash), newlines, `\\r`, NUL,
   `!`, a backslash (line continuations, escaped operators), and braces (`{-o,f}`
   is two words to bash, one to a parser).
2. It is split like a shell does (`shlex`, punctuation mode) into commands joined by
   `|`, `&&`, `||` or `;`. Any other operator token (`>`, `<`, `>>`, `&`, `(`, `)`,
   `<<`, `>&`...) refuses it: redirections write, subshells and background jobs hide.
3. Each command's first word must be a bare program name (no `/`: a `./ls` in the
   workspace is the agent's own program) with no `NAME=value` prefix, found in
   `READ_ONLY`, and its options must pass that program's rule: options that write
   (`sort -o`, `git diff --output`), run programs (`find -exec`, `rg
   --pre`, `git grep -O`) or change state (`date -s`) refuse it; `git` takes only the
   listed subcommands and no global options (`git -c core.pager=...` runs a program).
   Long options are matched by prefix, as getopt accepts abbreviations (`--out`).
   Such a program is never given an unquoted pattern (`*`, `?`, `[`): it could
   expand to a file the agent named like one of the options refused.
4. The commands' `PATH` must hold absolute directories only, none inside the working
   directory, or no command counts as read-only (the agent could plant an `ls`).

Test runners, `sed`, `awk`, `xargs`, `env`, interpreters and package managers are
not on the list: they run code; nor `tree` (`-R -H` writes a page into every
directory) or `cd`: a `cd` into a repository the workspace holds (a bare one in a
vendored tree, say) would make `git status` run the hooks its own configuration
names. The working directory's own repository configuration is the user's, or was
written by a change that waited for approval itself.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minidevin.runtime.mcp.config import TOOL_PREFIX

POLICIES = ("never", "risky", "always")
EDITOR_READS = frozenset({"view"})
_SEPARATORS = frozenset({"|", "&&", "||", ";"})
_REFUSED_CHARACTERS = frozenset("$`#\n\r\0!\\{}")
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class Rule:
    """What a read-only program may be given: `short` option letters and `long` options
    (matched by prefix) that refuse it, `max_operands` (None: any), `subcommands` (git)."""

    short: str = ""
    long: tuple[str, ...] = ()
    max_operands: int | None = None
    subcommands: Mapping[str, Rule] = field(default_factory=dict)
    # finds's predicates that act (they are words, not options)
    words: frozenset[str] = frozenset()


def _words(text: str) -> list[str]:
    return text.split()


_GIT_WRITES = ("--output", "--ext-diff", "--textconv")
_BRANCH_CHANGES = _words(
    "--delete --move --copy --force --set-upstream --unset-upstream --edit-description "
    "--track --no-track"
)
_GIT = Rule(
    subcommands={
        **{name: Rule() for name in _words("status ls-files ls-tree rev-parse describe shortlog")},
        **{name: Rule(long=_GIT_WRITES) for name in ("diff", "log", "show")},
        "blame": Rule(long=("--contents",)),
        "cat-file": Rule(long=("--textconv", "--filters")),
        "grep": Rule(short="O", long=("--open-files-in-pager", "--ext-grep")),
        "branch": Rule(short="dDmMcCfut", long=tuple(_BRANCH_CHANGES), max_operands=0),
        "remote": Rule(max_operands=0),
    }
)
_PLAIN = _words(
    "ls cat head tail wc nl pwd echo stat du df which whoami id basename dirname realpath "
    "readlink diff cmp grep egrep fgrep cut tr true test sha256sum sha1sum md5sum comm "
    "column uname hostname printenv"
)
_FIND_ACTIONS = _words("-exec -execdir -ok -okdir -delete -fprint -fprint0 -fprintf -fls")

PLAIN = Rule()
READ_ONLY: dict[str, Rule] = {
    **{name: PLAIN for name in _PLAIN},
    "file": Rule(short="C", long=("--compile",)),
    "date": Rule(short="s", long=("--set",)),
    "sort": Rule(short="oT", long=("--output", "--compress-program", "--temporary-directory")),
    "uniq": Rule(max_operands=1),  # (a second operand is the file it writes)
    "rg": Rule(short="z", long=("--pre", "--search-zip", "--hostname-bin")),
    "find": Rule(words=frozenset(_FIND_ACTIONS)),
    "git": _GIT,
}


def needs_approval(
    policy: str,
    tool: str,
    arguments: str,
    *,
    path: str | None = None,
    working_directory: Path | None = None,
) -> str | None:
    """Why the call must wait for approval under `policy`, or None if it runs at once.

    `arguments` is the call's raw JSON text; `path` the commands' `PATH`.
    """
    if policy == "never":
        return None
    if tool == "terminal":
        command = _field(arguments, "command")
        if policy == "always":
            return "every terminal command waits for approval (approval_policy: always)"
        why = command_risk(command, path=path, working_directory=working_directory)
        return None if why is None else f"the command may change something: {why}"
    if tool == "editor":
        command = _field(arguments, "command")
        if policy == "always":
            return "every editor call waits for approval (approval_policy: always)"
        if command in EDITOR_READS:
            return None
        return f"the editor's {command or 'unknown'!r} command changes files"
    if tool.startswith(TOOL_PREFIX):
        return f"{tool} is an MCP server's tool (approval_policy: {policy})"
    return None


def command_risk(
    command: str | None, *, path: str | None = None, working_directory: Path | None = None
) -> str | None:
    """None when `command` only reads (see the module's text); else why it may not."""
    if not isinstance(command, str) or not command.strip():
        return "no command"
    if problem := _path_problem(path, working_directory):
        return problem
    if bad := sorted(_REFUSED_CHARACTERS.intersection(command)):
        return f"it holds {', '.join(repr(c) for c in bad)}"
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes
        return f"it cannot be parsed ({exc})"
    globbed = _unquoted_glob(command)
    words: list[str] = []
    for token in [*tokens, ";"]:
        if token in _SEPARATORS:
            if why := _simple_command_risk(words, globbed):
                return why
            words = []
        elif token and set(token) <= set("();<>|&"):
            return f"it uses the shell operator {token!r}"
        else:
            words.append(token)
    return None


def _simple_command_risk(words: list[str], globbed: bool) -> str | None:
    if not words:
        return None  # (`a; ; b` is bash's error, not a write)
    program, args = words[0], words[1:]
    if "=" in program:
        return f"it sets a variable for the command ({program.split('=')[0]})"
    if "/" in program:
        return f"{program!r} is not a bare program name"
    rule = READ_ONLY.get(program)
    if rule is None:
        return f"{program!r} is not on the read-only list"
    if rule != PLAIN and globbed:
        # (a pattern can expand to a file the agent named `--pre=./x` or `-delete`)
        return f"{program} is given a pattern that could expand to one of its options"
    if rule.subcommands:
        if not args or args[0].startswith("-"):
            return f"{program} needs one of its read-only subcommands first"
        sub = rule.subcommands.get(args[0])
        if sub is None:
            return f"'{program} {args[0]}' is not on the read-only list"
        program, rule, args = f"{program} {args[0]}", sub, args[1:]
    return _arguments_risk(program, rule, args)


def _arguments_risk(program: str, rule: Rule, args: list[str]) -> str | None:
    operands = 0
    options_end = False
    for arg in args:
        if options_end or arg == "-" or not arg.startswith("-"):
            operands += 1
            if arg in rule.words:
                return f"{program} {arg} acts on what it finds"
            continue
        if arg == "--":
            options_end = True
            continue
        if arg in rule.words:
            return f"{program} {arg} acts on what it finds"
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            # `--out` abbreviates `--output`; `--set-upstream-to` is a `--set-upstream`
            if len(name) > 2 and any(
                option.startswith(name) or name.startswith(option) for option in rule.long
            ):
                return f"{program} {name} may write or run a program"
        elif rule.short and set(arg[1:]).intersection(rule.short):
            return f"{program} {arg} may write or run a program"
    if rule.max_operands is not None and operands > rule.max_operands:
        return f"{program} with {operands} operands may write"
    return None


def _unquoted_glob(command: str) -> bool:
    """Whether `command` holds `*`, `?` or `[` outside quotes (bash would expand it)."""
    quote = ""
    for char in command:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _GLOB:
            return True
    return False


def _path_problem(path: str | None, working_directory: Path | None) -> str | None:
    if path is None:
        return None
    for entry in path.split(":"):
        if not entry.startswith("/"):
            return f"PATH holds the relative entry {entry!r}"
        if working_directory is not None and Path(entry).is_relative_to(working_directory):
            return "PATH holds a directory inside the working directory"
    return None


def _field(arguments: str, name: str) -> Any:
    try:
        decoded = json.loads(arguments or "{}")
    except ValueError:
        return None
    return decoded.get(name) if isinstance(decoded, dict) else None
