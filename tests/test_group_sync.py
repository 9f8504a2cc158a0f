"""`GroupSync`: one group sync covers every caller that arrived before it began; a caller
never returns on a sync that began before its call; a failed sync fails exactly its callers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from scripted_provider import ScriptedOpenAIServer
from waiting import wait_for

from minidevin.runtime.group_sync import GroupSync
from minidevin.runtime.settings import Settings


class GatedSync:
    """The real `fsync`, held at a gate so the test decides when each one finishes (the
    callers here give no files: one sync of their directory each group)."""

    def __init__(self) -> None:
        self.started = 0
        self.gate = threading.Semaphore(0)
        self.fail_next = False
        self.calls: list[int] = []

    def __call__(self, fd: int) -> None:
        self.started += 1
        self.gate.acquire()
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        os.fsync(fd)  # (the directory: a real sync, just narrower)


def test_callers_share_syncs_and_never_return_on_one_that_began_before_them(
    tmp_path: Path,
) -> None:
    sync = GatedSync()
    group = GroupSync(sync)
    done: list[int] = []

    def caller(n: int) -> None:
        group.wait(tmp_path)
        done.append(n)

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    wait_for(lambda: sync.started == 1, 5, "the first sync to begin")
    later = [threading.Thread(target=caller, args=(n,)) for n in range(1, 21)]
    for thread in later:
        thread.start()
    wait_for(lambda: group._asked == 21, 5, "every caller to ask")
    sync.gate.release()  # the first sync ends: it began before the 20 others asked
    wait_for(lambda: done == [0], 5, "the first caller only")
    wait_for(lambda: sync.started == 2, 5, "one more sync, for all 20")
    assert done == [0]
    sync.gate.release()
    for thread in [first, *later]:
        thread.join(5)
    assert sorted(done) == list(range(21)) and group.syncs == 2  # 21 callers, 2 syncs


def test_a_failed_sync_fails_its_own_callers_only(tmp_path: Path) -> None:
    sync = GatedSync()
    group = GroupSync(sync)
    sync.fail_next = True
    sync.gate.release()
    with pytest.raises(OSError):
        group.wait(tmp_path)
    sync.gate.release()
    group.wait(tmp_path)  # the next one is fine


def test_a_missing_file_fails_its_own_caller_only(tmp_path: Path) -> None:
    sync = GatedSync()
    group = GroupSync(sync)
    (tmp_path / "good").write_text("g")
    errors: dict[str, BaseException | None] = {}

    def caller(name: str, files: list[Path]) -> None:
        try:
            group.wait(tmp_path, files)
            errors[name] = None
        except OSError as exc:
            errors[name] = exc

    first = threading.Thread(target=caller, args=("first", []))
    first.start()
    wait_for(lambda: sync.started == 1, 5, "the first sync")
    threads = [
        threading.Thread(target=caller, args=("good", [tmp_path / "good"])),
        threading.Thread(target=caller, args=("bad", [tmp_path / "missing"])),
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: group._asked == 3, 5, "both to ask")
    for _ in range(3):
        sync.gate.release()  # the first group, then the good file and the directory
    for thread in [first, *threads]:
        thread.join(5)
    assert errors["first"] is None and errors["good"] is None
    assert isinstance(errors["bad"], FileNotFoundError)


def test_each_callers_files_are_synced_and_a_missing_one_fails(tmp_path: Path) -> None:
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(fd)
        os.fsync(fd)

    group = GroupSync(fsync)
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    group.wait(tmp_path, [tmp_path / "a", tmp_path / "b"])
    assert len(synced) == 3  # two files and their directory
    with pytest.raises(OSError):
        group.wait(tmp_path, [tmp_path / "missing"])


@pytest.mark.parametrize("sync", ["normal", "full"])
async def test_the_sync_setting_sets_the_database_and_the_artifacts_alike(
    settings: Settings, openai_server: ScriptedOpenAIServer, tmp_path: Path, sync: str
) -> None:
    from conftest import provider_env
    from scripted_provider import finish

    from minidevin.api import Runtime
    from minidevin.runtime.group_sync import ARTIFACTS

    openai_server.script([finish("done")])
    (tmp_path / "w").mkdir()
    async with Runtime(
        settings.model_copy(update={"sync": sync}), provider_env=provider_env(openai_server)
    ) as runtime:
        if settings.database_url is None:  # (PostgreSQL's durability is the server's own)
            level = await runtime.store.fetch_one("PRAGMA synchronous")
            assert level is not None and list(level.values()) == [2 if sync == "full" else 1]
        before = ARTIFACTS.syncs
        session = await runtime.create_session("s", tmp_path / "w")
        task = await runtime.create_task(session.id, "finish", model="gpt-4o")
        assert (await runtime.wait(task.id)).status == "completed"
        assert len(await runtime.list_artifacts(task.id)) == 3
        assert (ARTIFACTS.syncs > before) == (sync == "full")
