"""Reading returns on a Dask cluster (flows/dask_parsing.py): a local cluster of two worker
processes started here, on 127.0.0.1, and the same returns read without it for comparison."""

from __future__ import annotations

import socket
from collections import Counter

import pytest
from sqlalchemy import select

from flows.demo import build_returns, drop

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


@pytest.fixture(scope="module")
def dask_cluster():
    """Two worker processes of one thread each, on loopback, stopped afterwards."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, protocol="tcp") as cluster:
        yield cluster


def _decisions(home) -> Counter:
    from tasks.core.ledger import Ledger, Submission
    with Ledger(home).reading() as s:
        return Counter(s.execute(select(Submission.unit_code, Submission.state)).all())


def _collect(home, config, config_dir, monkeypatch, **env):
    import flows.collect_returns as collect_module
    from flows.collect_returns import collect_returns

    returns = build_returns(config)
    inbox = home / "inbox" / CAMPAIGN
    inbox.mkdir(parents=True)
    for i, r in enumerate(returns.values()):
        drop(config, inbox, r, ("generated", "bom-csv")[i % 2])
    monkeypatch.setattr(collect_module, "PARALLEL_FROM", 2)  # the demo's two dozen returns count as many
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    state = collect_returns(CAMPAIGN, now=config.campaign.calendar.deadline_at.replace(day=20),
                            home=str(home), config_dir=str(config_dir), return_state=True)
    return state.result(), state.state_details.flow_run_id


def _task_runs(flow_run_id, name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r for r in runs if r.name.startswith(name)]


def test_returns_are_read_on_the_cluster_by_chunks_with_the_same_decisions(
        dask_cluster, tmp_path, config, config_dir, monkeypatch):
    local, _ = _collect(tmp_path / "local", config, config_dir, monkeypatch)
    monkeypatch.setenv("BULLETIN_DASK_CHUNK", "5")
    on_dask, flow_run_id = _collect(tmp_path / "dask", config, config_dir, monkeypatch,
                                    BULLETIN_DASK_ADDRESS=dask_cluster.scheduler_address)

    assert on_dask["decided"] == local["decided"]
    assert _decisions(tmp_path / "dask") == _decisions(tmp_path / "local")
    assert sum(_decisions(tmp_path / "dask").values()) == len(config.units)
    chunks = _task_runs(flow_run_id, "parse-chunk")
    assert len(chunks) == -(-len(config.units) // 5), "one task per chunk of five, never one per return"
    assert {r.state_name for r in chunks} == {"Completed"}
    # the chunks ran in the cluster's worker processes (its scheduler lives in this process)
    done = {name: prefix.state_counts["memory"] + prefix.state_counts["released"] + prefix.state_counts["forgotten"]
            for name, prefix in dask_cluster.scheduler.task_prefixes.items()}
    assert done.get("parse_chunk", 0) >= len(chunks), done


def test_an_unreachable_cluster_leaves_the_reading_to_this_machine(tmp_path, config, config_dir, monkeypatch,
                                                                   caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local, _ = _collect(tmp_path / "local", config, config_dir, monkeypatch)
    result, _ = _collect(tmp_path / "dead", config, config_dir, monkeypatch,
                                   BULLETIN_DASK_ADDRESS=f"tcp://127.0.0.1:{port}")
    assert result["decided"] == local["decided"]
    assert _decisions(tmp_path / "dead") == _decisions(tmp_path / "local")
    # the flow-run logger's records as emitted (the API receives them in batches, later)
    assert any("无法使用 Dask 集群" in line for line in caplog.messages), "the coordinator is told"
