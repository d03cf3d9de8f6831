"""The arrival watcher of ``serve`` (flows/watch.py): a burst gives one run, runs never overlap,
a drop-folder entry counts once it stopped changing."""

from __future__ import annotations

from flows.watch import MAX_WAIT, QUIET, STABLE, FolderSentinel, Trigger


class Runs:
    def __init__(self):
        self.started: list[str] = []
        self.done: set[str] = set()
        self.fail = 0

    def start(self, campaign: str) -> str:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("API restarting")
        self.started.append(campaign)
        return f"run-{len(self.started)}"

    def finished(self, run_id: str) -> bool:
        return run_id in self.done


def test_a_burst_gives_one_run_after_it_ends():
    runs = Runs()
    t = Trigger(runs.start, runs.finished)
    for second in (0, 1, 2):
        t.arrived("c", second)
    t.tick(2 + QUIET - 0.1)
    assert runs.started == []
    t.tick(2 + QUIET)
    assert runs.started == ["c"]
    t.tick(30)
    assert runs.started == ["c"]  # nothing new: no second run


def test_a_steady_stream_still_gets_a_run_within_max_wait():
    runs = Runs()
    t = Trigger(runs.start, runs.finished)
    second = 0.0
    while not runs.started:
        t.arrived("c", second)
        t.tick(second)
        second += 1
    assert second - 1 <= MAX_WAIT


def test_runs_never_overlap_and_arrivals_meanwhile_get_the_next():
    runs = Runs()
    t = Trigger(runs.start, runs.finished)
    t.arrived("c", 0)
    t.tick(QUIET)
    t.arrived("c", 10)
    t.tick(10 + QUIET + 5)
    assert runs.started == ["c"]  # run-1 still going
    runs.done.add("run-1")
    t.tick(10 + QUIET + 6)
    assert runs.started == ["c", "c"]


def test_a_run_that_cannot_start_is_tried_again():
    runs = Runs()
    runs.fail = 1
    t = Trigger(runs.start, runs.finished)
    t.arrived("c", 0)
    t.tick(QUIET)
    assert runs.started == []
    t.tick(2 * QUIET + 1)
    assert runs.started == ["c"]


def test_a_folder_entry_counts_once_it_stopped_changing(tmp_path):
    runs = Runs()
    t = Trigger(runs.start, runs.finished)
    folder = tmp_path / "inbox"
    sentinel = FolderSentinel("c", folder, t)
    sentinel.look(0)  # no folder yet
    folder.mkdir()
    (folder / "a.xlsx").write_bytes(b"half")
    sentinel.look(1)
    (folder / "a.xlsx").write_bytes(b"half and the rest")  # still being copied
    sentinel.look(2)
    sentinel.look(2 + STABLE - 0.1)
    assert t.pending == {}
    sentinel.look(2 + STABLE)
    assert list(t.pending) == ["c"]
    t.pending.clear()
    sentinel.look(10)
    assert t.pending == {}  # the same content is not news
    (folder / "a.xlsx").unlink()  # collect took it away
    sentinel.look(11)
    sentinel.look(11 + STABLE)
    assert t.pending == {}
    (folder / "b").mkdir()
    (folder / "b" / "photo.jpg").write_bytes(b"jpg")
    sentinel.look(20)
    sentinel.look(20 + STABLE)
    assert list(t.pending) == ["c"]
