"""Receipts within a minute: while ``serve`` runs, a return that arrives starts a
``collect-returns`` run at once instead of waiting for the next scheduled one.

Sentinels feed one :class:`Trigger`:

- each open campaign's drop folder ``<home>/inbox/<campaign>/``, looked at every second; what
  it holds counts once it has not changed for two seconds (a copy in progress is not taken
  half-written);
- each open campaign's IMAP folder (``BULLETIN_IMAP_*``), with IDLE, or a short poll of its
  message count where the server lacks IDLE.

The trigger debounces (a burst gives one run: it waits until nothing new came for
``QUIET`` seconds, at most ``MAX_WAIT``) and never overlaps its own runs (while its last run is
not finished, arrivals wait for it). Its runs are ordinary runs of the campaign's
``collect-returns`` deployment, guarded like every other run (the ledger's locks), and show in
the Prefect UI as such.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tasks.core.config import Config, ConfigError, list_campaigns, load_config
from tasks.core.settings import ImapSettings

from .secrets import SecretError, imap_settings

log = logging.getLogger("bulletin.watch")
QUIET, MAX_WAIT = 3.0, 15.0  # seconds: a burst's end; the longest an arrival waits for its run
STABLE = 2.0  # a drop-folder entry unchanged this long is complete
POLL = 1.0
IMAP_POLL = 5.0  # where the server lacks IDLE
IDLE_RENEW = 300  # re-issue IDLE well before servers drop it (RFC 2177: 29 minutes)


@dataclass
class _Pending:
    first: float
    last: float


@dataclass
class Trigger:
    """Turns arrivals into runs: debounced, one at a time per campaign."""

    start_run: Callable[[str], str]  # campaign -> run id
    run_finished: Callable[[str], bool]  # run id -> finished?
    quiet: float = QUIET
    max_wait: float = MAX_WAIT
    pending: dict[str, _Pending] = field(default_factory=dict)
    running: dict[str, str] = field(default_factory=dict)
    started: list[tuple[str, str]] = field(default_factory=list)  # (campaign, run id), for the log and tests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrived(self, campaign: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            p = self.pending.setdefault(campaign, _Pending(now, now))
            p.last = now

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self.lock:
            due = [c for c, p in self.pending.items()
                   if now - p.last >= self.quiet or now - p.first >= self.max_wait]
        for campaign in due:
            run = self.running.get(campaign)
            if run is not None:
                try:
                    if not self.run_finished(run):
                        continue  # the next run starts when this one is done
                except Exception as exc:  # noqa: BLE001 - the API may be restarting: try again later
                    log.warning("收取运行 %s 状态未知：%s", run, exc)
                    continue
            with self.lock:
                self.pending.pop(campaign, None)
            try:
                run_id = self.start_run(campaign)
            except Exception as exc:  # noqa: BLE001 - the scheduled collect still comes
                log.warning("未能启动 %s 的收取运行：%s；稍后重试", campaign, exc)
                self.arrived(campaign, now)
                continue
            self.running[campaign] = run_id
            self.started.append((campaign, run_id))
            log.info("新到报送：已启动 %s 的收取运行 %s", campaign, run_id)


class FolderSentinel:
    """What a drop folder holds, reported once it stopped changing (and each time it changes)."""

    def __init__(self, campaign: str, folder: Path, trigger: Trigger):
        self.campaign, self.folder, self.trigger = campaign, folder, trigger
        self.seen: frozenset = frozenset()  # the last state reported
        self.candidate: tuple[frozenset, float] | None = None

    def state(self) -> frozenset:
        if not self.folder.is_dir():
            return frozenset()
        out = set()
        for entry in self.folder.iterdir():
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError):  # taken away meanwhile
                files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
                out.add((entry.name, tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))))
        return frozenset(out)

    def look(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        state = self.state()
        if self.candidate is None or self.candidate[0] != state:
            self.candidate = (state, now)
            return
        if now - self.candidate[1] >= STABLE and state != self.seen:
            self.seen = state
            if state:  # something is there, and it is new
                self.trigger.arrived(self.campaign, now)


def imap_sentinel(settings: ImapSettings, campaigns: list[str], trigger: Trigger, stop: threading.Event) -> None:
    """Wait on the folder with IDLE (or poll its message count) and report new mail."""
    from tasks.intake.mailbox import open_mailbox
    backoff = 5.0
    while not stop.is_set():
        try:
            with open_mailbox(settings) as box:
                backoff = 5.0
                idle = "IDLE" in box.client.capabilities
                count = box.folder.status(settings.folder)["MESSAGES"]
                if count:  # mail already waiting when serve starts (or while it reconnected)
                    for c in campaigns:
                        trigger.arrived(c)
                while not stop.is_set():
                    if idle:
                        responses = box.idle.wait(timeout=min(IDLE_RENEW, 30))
                        new = any(b"EXISTS" in r for r in responses)
                    else:
                        stop.wait(IMAP_POLL)
                        now_count = box.folder.status(settings.folder)["MESSAGES"]
                        new, count = now_count > count, now_count
                    if new:
                        for c in campaigns:
                            trigger.arrived(c)
        except Exception as exc:  # noqa: BLE001 - reconnect, never die
            log.warning("邮箱监视中断（%s），%0.f 秒后重连", exc, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 300)


def open_campaigns(config_dir: Path, now: dt.datetime) -> list[Config]:
    """Campaigns that have opened and closed less than 30 days ago (late returns still come)."""
    out = []
    for campaign in list_campaigns(config_dir):
        try:
            config = load_config(config_dir, campaign)
        except ConfigError:
            continue
        cal = config.campaign.calendar
        if cal.opens_at <= now <= cal.closes_at + dt.timedelta(days=30):
            out.append(config)
    return out


def start_watching(home: Path, config_dir: Path, trigger: Trigger | None = None) -> threading.Event:
    """Start the sentinels and the trigger in daemon threads; set the returned event to stop."""
    stop = threading.Event()
    configs = open_campaigns(config_dir, dt.datetime.now(dt.timezone.utc))
    if not configs:
        log.info("没有进行中的报送任务：不监视收件")
        return stop
    trigger = trigger or Trigger(_start_collect, _finished)
    folders = [FolderSentinel(c.campaign.id, home / "inbox" / c.campaign.id, trigger) for c in configs]

    def loop() -> None:
        while not stop.is_set():
            for f in folders:
                with contextlib.suppress(OSError):
                    f.look()
            trigger.tick()
            stop.wait(POLL)

    threading.Thread(target=loop, name="bulletin-watch", daemon=True).start()
    try:
        settings = imap_settings()
    except SecretError as exc:
        log.warning("不监视邮箱：%s", exc)
        return stop
    if settings.host:
        by_folder: dict[str, list[str]] = {}
        for c in configs:
            by_folder.setdefault(c.campaign.mailbox_folder or settings.folder, []).append(c.campaign.id)
        for folder, campaigns in by_folder.items():
            threading.Thread(target=imap_sentinel, name=f"bulletin-imap-{folder}", daemon=True,
                             args=(settings.model_copy(update={"folder": folder}), campaigns, trigger, stop)).start()
    print(f"监视收件 watching: {', '.join(c.campaign.id for c in configs)}"
          f"（投递文件夹{'与邮箱' if settings.host else ''}，新报送到达即收取）", flush=True)
    return stop


def _start_collect(campaign: str) -> str:
    from prefect.deployments import run_deployment
    run = run_deployment(f"collect-returns/{campaign}", timeout=0, tags=["arrival"])
    return str(run.id)


def _finished(run_id: str) -> bool:
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state is not None and state.is_final()
