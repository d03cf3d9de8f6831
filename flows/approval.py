"""Publish runs waiting for approval, seen from outside: find them, answer them, retire them.

A ``publish-bulletin`` run that waits for approval is *suspended* (no process, no ``serve``
slot): its pause key ``approval-v<N>-<attempt>`` says which version it waits on. An answer
resumes only runs waiting on the version it names; Prefect then reschedules the run, and the
runner of ``serve`` (or a worker) starts it again from the top, where it reads the decision
(see ``flows.publish_bulletin``). A run waiting on a version that a newer compile superseded
is ended here, with the reason in its state message and its log, and a run waiting on the
latest version takes its place.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

PUBLISH_FLOW = "publish-bulletin"
_PAUSE_KEY = re.compile(r"^approval-v(\d+)-(\d+)$")


def pause_key(version: int, attempt: int) -> str:
    """The pause key of a run's *attempt*-th wait for a decision on *version*."""
    return f"approval-v{version}-{attempt}"


@dataclass(frozen=True)
class WaitingRun:
    id: UUID
    version: int
    deployment_id: UUID | None
    parameters: dict


def _is_campaign(parameter: object, campaign: str) -> bool:
    return isinstance(parameter, str) and (parameter == campaign or Path(parameter).stem == campaign)


def waiting_runs(campaign: str) -> list[WaitingRun]:
    """The campaign's publish runs suspended for a decision, with the version each waits on."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[PUBLISH_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    found = []
    for run in runs:
        match = _PAUSE_KEY.match(run.state.state_details.pause_key or "") if run.state else None
        if match and _is_campaign(run.parameters.get("campaign"), campaign):
            found.append(WaitingRun(run.id, int(match.group(1)), run.deployment_id, dict(run.parameters)))
    return found


def resume_waiting_runs(campaign: str, version: int, *, approve: bool, by: str, note: str) -> list[str]:
    """Answer the runs waiting on *version*, and no other, with the decision (already in the
    ledger: the run reads it there). Returns the ids of the runs resumed."""
    answer = {"approve": approve, "name": by, "comment": note, "version": version}
    resumed = []
    with get_client(sync_client=True) as client:
        for run in waiting_runs(campaign):
            if run.version == version:
                result = client.resume_flow_run(run.id, run_input=answer)
                if result.status.value == "ACCEPT":
                    resumed.append(str(run.id))
    return resumed


def retire_superseded_runs(campaign: str, latest: int, *, offer_latest: bool = True) -> dict[str, list[str]]:
    """End the runs waiting on a version older than *latest* (state Cancelled, the reason in
    its message and in the run's log) and, if *offer_latest*, start one run of the same
    deployment waiting on *latest* instead, so the UI offers its form. Safe to repeat: the
    replacement has an idempotency key per version."""
    ended, offered = [], []
    with get_client(sync_client=True) as client:
        for run in waiting_runs(campaign):
            if run.version >= latest:
                continue
            reason = (f"第{run.version}版已被第{latest}版取代：本次发布结束，未发送任何邮件。"
                      f"请审批第{latest}版。")
            client.create_logs([LogCreate(name="bulletin.approval", level=logging.WARNING, message=reason,
                                          timestamp=dt.datetime.now(dt.timezone.utc), flow_run_id=run.id)])
            client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
            ended.append(str(run.id))
            if offer_latest and run.deployment_id is not None:
                new = client.create_flow_run_from_deployment(
                    run.deployment_id, parameters={**run.parameters, "version": latest, "wait_for_approval": True},
                    idempotency_key=f"{campaign}/approval/v{latest}")
                if str(new.id) not in offered:
                    offered.append(str(new.id))
    return {"ended": ended, "offered": offered}
