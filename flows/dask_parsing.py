"""Reading returns on a Dask cluster, as Prefect tasks run by prefect-dask's task runner.

``BULLETIN_DASK_ADDRESS`` (e.g. ``tcp://10.0.0.5:8786``) names the scheduler; unset, returns
are read by forked worker processes on this machine (``tasks.reading.parallel``). Work goes
out by chunks of ``BULLETIN_DASK_CHUNK`` returns (default 500), never a task per return.

What a Dask worker needs: this project installed (the same version), the home folder and the
config folder at the same paths as here (the archive is read from the home folder, the config
is loaded by the worker itself rather than shipped with every chunk), and the Prefect API
that this flow reports to. A chunk that fails on the cluster (a worker lost twice, the
scheduler gone) is read here instead: nothing is lost, the run is only slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.config import load_config
from tasks.core.settings import AppSettings
from tasks.reading.parsing import Job, Parsed, parse_one_safely, unit_index

from .context import Context, config_cache


class Batch:
    """Jobs or their findings, as one plain object: Prefect walks lists and dataclasses passed
    to or returned from a task (looking for futures), which costs at hundreds per chunk."""

    def __init__(self, items: list):
        self.items = items

    def __repr__(self) -> str:
        return f"Batch({len(self.items)})"


def dask_address() -> str | None:
    """The scheduler's address from ``BULLETIN_DASK_ADDRESS``, or None for local workers."""
    return AppSettings().dask_address or None


@task(name="parse-chunk", cache_policy=NO_CACHE, persist_result=False)
def parse_chunk(home: str, config_dir: str, campaign: str, jobs: Batch) -> Batch:
    """Read and check one chunk of received returns on a Dask worker."""
    config = load_config(Path(config_dir), campaign, cache_dir=config_cache(Path(home)))
    unit_index(config.units)  # once per worker process (load_config keeps the Config)
    return Batch([parse_one_safely(Path(home), config, job) for job in jobs.items])


def parse_on_dask(ctx: Context, jobs: list[Job], address: str,
                  progress: Callable[[int, int], None] | None = None) -> dict[int, Parsed]:
    """Every job read on the cluster at *address*, by chunks: parsed submissions by id. Chunks
    the cluster could not read are read in this process.

    Call it from a flow's body, not from inside a task: each chunk carries the Prefect context,
    and a task's context holds that task's parameters (a ledger, which does not pickle)."""
    from prefect_dask import DaskTaskRunner  # only when a cluster is named

    log = get_run_logger()
    size = max(1, AppSettings().dask_chunk)
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    home, config_dir = str(ctx.home), str(ctx.config.directory)
    found: dict[int, Parsed] = {}
    started = time.monotonic()
    left: list[list[Job]] = chunks
    try:
        with DaskTaskRunner(address=address, client_kwargs={"timeout": "20s"}) as runner:
            futures = [(chunk, runner.submit(parse_chunk, {"home": home, "config_dir": config_dir,
                                                           "campaign": ctx.campaign_id, "jobs": Batch(chunk)}))
                       for chunk in chunks]
            left = []
            for chunk, future in futures:
                try:
                    batch = future.result(raise_on_failure=True)
                except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: this chunk is read here
                    log.warning("Dask 解析失败（%s: %s），%d 份改由本进程解析", type(exc).__name__, exc, len(chunk))
                    left.append(chunk)
                    continue
                found.update((job.id, p.reattach(job)) for job, p in zip(chunk, batch.items))
                if progress:
                    progress(len(found), len(jobs))
    except Exception as exc:  # noqa: BLE001 - the cluster unreachable: everything read here
        log.warning("无法使用 Dask 集群 %s（%s: %s），改由本机解析", address, type(exc).__name__, exc)
        left = [c for c in chunks if c[0].id not in found]
    log.info("Dask 集群 %s 解析 %d 份，用时 %.1f 秒", address, len(found), time.monotonic() - started)
    for chunk in left:
        found.update((job.id, parse_one_safely(ctx.home, ctx.config, job)) for job in chunk)
    return found
