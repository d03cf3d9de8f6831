"""Resume publish runs paused for approval after the decision was written to the ledger."""

from __future__ import annotations

import asyncio

from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run


async def _paused_publish_runs(campaign: str) -> list:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["publish-bulletin"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return [r for r in runs if r.parameters.get("campaign") == campaign]


def resume_waiting_runs(campaign: str, version: int, *, approve: bool, by: str, note: str) -> list[str]:
    """Answer every paused ``publish-bulletin`` run of the campaign with the same decision."""
    resumed = []
    for run in asyncio.run(_paused_publish_runs(campaign)):
        resume_flow_run(run.id, run_input={"approve": approve, "name": by, "comment": note})
        resumed.append(str(run.id))
    return resumed
