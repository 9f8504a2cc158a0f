"""Start-up of a `Runtime` once it holds its data directory: open the store, settle
what a previous process left, probe the sandbox, restart the queue, start the
background sweeps."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from minidevin.nodes import join_nodes
from minidevin.resume import restart_queue
from minidevin.runtime.accounts import Accounts
from minidevin.runtime.auth import TokenIssuer, load_jwt_secret
from minidevin.runtime.recovery import recover_tasks
from minidevin.runtime.retention import RetentionSweeper
from minidevin.runtime.secrets_store import Secrets, load_secrets_key
from minidevin.runtime.snapshots import clear_leftovers
from minidevin.runtime.storage import secure_data_dir
from minidevin.runtime.storage.open_errors import data_dir_error
from minidevin.runtime.tools.sandbox import sandbox_status
from minidevin.runtime.webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from minidevin.api import Runtime

log = structlog.get_logger("minidevin.api")


async def open_runtime(runtime: Runtime) -> None:
    """Everything `Runtime.start` does after taking the data directory's lock."""
    try:
        await asyncio.to_thread(secure_data_dir, runtime.settings.data_dir)  # 0700, files 0600
    except OSError as exc:
        raise data_dir_error(runtime.settings.data_dir, exc) from None
    runtime.webhooks = WebhookDeliverer(runtime.store, runtime.settings)
    runtime.store.on_events_committed = runtime.webhooks.watching(runtime.hub.publish)
    runtime.store.outage.on_expired = runtime.hub.mark_store_down
    runtime.store.outage.on_recovered = runtime.hub.mark_store_back
    await runtime.store.open()
    secret = load_jwt_secret(runtime.settings.data_dir, runtime.settings.jwt_secret)
    tokens = TokenIssuer(secret, runtime.settings.jwt_ttl_seconds)
    runtime.accounts = Accounts(runtime.store, tokens, runtime.settings)
    box = load_secrets_key(runtime.settings.data_dir, runtime.settings.secrets_key)
    runtime.secrets = Secrets(runtime.store, box)
    runtime.webhooks.open_secret = runtime.secrets.open  # (webhook secrets are stored sealed)
    runtime.deps = replace(runtime.deps, secrets=runtime.secrets)  # (before any actor starts)
    if runtime.settings.redis_url is not None:  # one node of several
        await join_nodes(runtime)
    recovered = await recover_tasks(runtime.store, runtime.settings.data_dir, runtime._runs_here)
    # no task is live yet: patches a previous process left are garbage (its stores are not)
    await asyncio.to_thread(clear_leftovers, runtime.settings.snapshots_dir)
    sandbox = await asyncio.to_thread(sandbox_status)  # probes bwrap once, off the loop
    if runtime.settings.sandbox != "off" and not sandbox.works:
        log.warning(
            "sandbox_unavailable",
            mode=runtime.settings.sandbox,
            reason=sandbox.reason,
            consequence="tasks are refused"
            if runtime.settings.sandbox == "required"
            else "commands run unsandboxed",
        )
    boundary = await asyncio.to_thread(sandbox.as_health, runtime.settings.sandbox)
    if not boundary["uid_isolation"]:
        log.warning("uid_isolation_unavailable", reason=boundary["uid_isolation_reason"])
    # the queue a stopped server left runs again, in order (and what was live goes
    # on too with `MINIDEVIN_RESUME_INTERRUPTED`)
    if runtime._restart_queue:
        await restart_queue(runtime, recovered, resume=runtime.settings.resume_interrupted)
    runtime.webhooks.start()  # what a previous process left undelivered goes out too
    if runtime.settings.retention_days is not None:  # old finished tasks go, in the background
        runtime.retention = RetentionSweeper(
            runtime.store,
            runtime.settings.artifacts_dir,
            runtime.settings.retention_days,
            lock_for=runtime._session_lock,
        )
        runtime.retention.start()
    if runtime.nodes is not None:  # forwarded commands run here from now on
        runtime.nodes.ready = True
    log.info(
        "runtime_started",
        data_dir=str(runtime.settings.data_dir),
        uid_isolation=boundary["uid_isolation"],
        limits=boundary["limits"],
    )
