"""Scale benchmark: collect + compile on N synthetic returns against a baseline that keeps the
same obligations, with the bare baseline beside it.

    python bench/collect.py                  # N = 10,000 and 100,000 in one run (about 20 min)
    python bench/collect.py --n 1000         # one size
    python bench/collect.py --n 10000 --profile   # product run under cProfile (slower)

For each N it generates, in a temporary folder, a campaign configuration with N units
(``B000001`` / ``单位000001``, kind department, one contact on example.org) and N returns in
the wide layout (a header row of labels with a ``填报单位`` column, one row of values): up to
N = 10,000 half .xlsx (one openpyxl template, cells patched in the zip) and half UTF-8 .csv,
above that .csv only. About 1 % carry a negative count (rejected) and 1 % a count above
``warn_above`` without an explanation (needs explanation); the rest are accepted.

Then, each in a fresh child process (so peak memory is each one's own):

- **bare baseline**: a plain script doing the essential work, no Prefect and no ledger:
  sha256 + copy of every file into ``archive/<sha[:2]>/<sha>``, read with python-calamine's
  own API or ``csv``, identify the unit by its name (a dict), one DataFrame, the same
  vectorised checks as one pandera pass (non-negative, required not null, ``warn_above``, the
  campaign's cross-check), group sums of the accepted returns, one small text file per return
  as its "receipt";
- **equal-obligation baseline** (the yardstick): the same script keeping the product's
  promises: archived files and receipts made durable with one ``syncfs`` per chunk of 500
  (the product's own ``tasks.core.durable.sync_folder``), and every file read through the
  product's guarded reader (``tasks.reading.readers.read_sheets``: zip bombs, runaway ranges,
  encodings);
- **product**: the real flows in one process, ``collect_returns(...)`` then
  ``compile_bulletin(...)``, with home and config pointing at the bench folder, the file
  outbox (no ``BULLETIN_SMTP_HOST``), SQLite ledger and Prefect's ephemeral server in a
  ``PREFECT_HOME`` of its own. The server's start (the first, trivial flow run) and the
  imports are timed and reported apart and left out of the ratio.

Printed per N: product seconds (collect + compile), both baselines' seconds and ratios,
returns and figures per second, and peak memory: the product's process and its parsing
workers summed (their PSS, sampled every 0.1 s from /proc), the Prefect server apart (its VmHWM). A
check compares the product's decisions and totals with both baselines' (the same work was
done). Progress goes to stderr; Prefect's own console logs go to ``<folder>/n<N>/product.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = "energy-week-2023"
COLLECT_AT = "2023-09-25T10:00:00+08:00"  # before the deadline: nothing late
COMPILE_AT = "2023-10-09T09:00:00+08:00"
TARGET_RATIO = 1.25  # against the baseline keeping the same obligations
MEMORY_TARGET_MB = 1024  # product process + workers, N = 100,000

_progress = sys.stderr


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=_progress, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- generation
def _load_yaml(path: Path):
    import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)


def form_fields(config_dir: Path) -> list[dict]:
    return _load_yaml(config_dir / "campaigns" / f"{CAMPAIGN}.yaml")["form"]["fields"]


def header_label(f: dict) -> str:
    """What a unit's own sheet puts in the header: the label with its unit in brackets."""
    return f"{f['label']}（{f['unit']}）" if f.get("unit") else f["label"]


def unit_code(i: int) -> str:
    return f"B{i:06d}"


def unit_name(i: int) -> str:
    return f"单位{i:06d}"


def write_config(config_dir: Path, n: int) -> None:
    """The bundled lists and campaigns (the 2023 one refers to 2022), N units of our own."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config" / "lists.yaml", config_dir / "lists.yaml")
    shutil.copytree(ROOT / "config" / "campaigns", config_dir / "campaigns", dirs_exist_ok=True)
    lines = ["# synthetic units for bench/collect.py", "units:"]
    for i in range(1, n + 1):
        code, name = unit_code(i), unit_name(i)
        lines += [f'  - code: "{code}"', f"    name: {name}", "    kind: department",
                  f"    contacts: [{{name: 联系人{i:06d}, email: {code.lower()}@example.org}}]",
                  f"    supervisor: {{name: 负责人{i:06d}, email: {code.lower()}-leader@example.org}}"]
    (config_dir / "units.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def return_values(i: int, fields: list[dict], rng: random.Random) -> dict[str, object]:
    """One unit's figures; every 97th has a negative count, every 89th one above warn_above."""
    v: dict[str, object] = {}
    for f in fields:
        if f.get("kind") == "text":
            continue
        cap = f.get("warn_above") or 1000
        v[f["key"]] = rng.randint(0, max(1, cap // 3))
    v["trainings"] = rng.randint(0, 16)
    v["participants"] = rng.randint(100, 100_000)  # >= trainings: the cross-check holds
    if i % 97 == 0:
        v["posters"] = -rng.randint(1, 50)
    if i % 89 == 0:
        v["banners"] = 1000 + rng.randint(1, 500)
    v["activities"] = (f"{unit_name(i)}组织开展节能宣传周活动，张贴宣传画{v['posters']}套，"
                       f"举办节能培训{v['trainings']}场，参与干部职工{v['participants']}人次，"
                       "营造了绿色低碳的良好氛围。")
    v["highlights"] = "开展节能知识竞赛，职工踊跃参与。" if i % 3 == 0 else ""
    return v


class XlsxTemplate:
    """One openpyxl workbook with placeholders; each return patches the XML in the zip."""

    def __init__(self, fields: list[dict]):
        from openpyxl import Workbook
        self.fields = fields
        wb = Workbook()
        ws = wb.active
        ws.title = "报送表"
        ws.append(["填报单位"] + [header_label(f) for f in fields])
        row: list[object] = ["@@UNIT@@"]
        for k, f in enumerate(fields):
            row.append(f"@@{f['key']}@@" if f.get("kind") == "text" else 987_600 + k)
        ws.append(row)
        buf = io.BytesIO()
        wb.save(buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
            self.members = [(info, zf.read(info)) for info in zf.infolist()]

    def write(self, path: Path, name: str, values: dict[str, object]) -> None:
        subs: list[tuple[bytes, bytes]] = [(b"@@UNIT@@", name.encode())]
        for k, f in enumerate(self.fields):
            if f.get("kind") == "text":
                subs.append((f"@@{f['key']}@@".encode(), str(values[f["key"]]).encode()))
            else:
                subs.append((f"<v>{987_600 + k}</v>".encode(), f"<v>{values[f['key']]}</v>".encode()))
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in self.members:
                if info.filename.startswith("xl/worksheets/") or info.filename == "xl/sharedStrings.xml":
                    for old, new in subs:
                        data = data.replace(old, new)
                zf.writestr(info.filename, data)


def generate(folder: Path, n: int, xlsx_share: float) -> dict:
    """Config + N returns under ``folder``; returns what the run needs to know."""
    config_dir, returns = folder / "config", folder / "returns"
    write_config(config_dir, n)
    fields = form_fields(config_dir)
    returns.mkdir(parents=True, exist_ok=True)
    template = XlsxTemplate(fields) if xlsx_share > 0 else None
    rng = random.Random(20261125 + n)
    header = ["填报单位"] + [header_label(f) for f in fields]
    step = max(1, n // 10)
    xlsx_every = round(1 / xlsx_share) if xlsx_share > 0 else 0
    n_xlsx = 0
    for i in range(1, n + 1):
        values = return_values(i, fields, rng)
        name = unit_name(i)
        if xlsx_every and i % xlsx_every == 0:
            template.write(returns / f"{name}-节能宣传周报送表.xlsx", name, values)
            n_xlsx += 1
        else:
            with open(returns / f"{name}-节能宣传周报送表.csv", "w", encoding="utf-8", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerow([name] + [values[f["key"]] for f in fields])
        if i % step == 0:
            say(f"  generated {i:,}/{n:,}")
    size = sum(p.stat().st_size for p in returns.iterdir())
    return {"xlsx": n_xlsx, "csv": n - n_xlsx, "bytes": size}


# ----------------------------------------------------------------------------- baseline
CHUNK = 500  # files made durable together, as the product does (one syncfs per chunk)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def run_baseline(folder: Path, equal: bool = False) -> dict:
    """The bare script: archive, read, one frame, one pandera pass, group sums, receipts.

    ``equal``: the same obligations as the product: every archived file and every receipt
    made durable (one ``syncfs`` per chunk of 500, the product's own ``sync_folder``), and
    every file read through the product's guarded reader (zip bombs, runaway ranges, encodings)."""
    t_imp = time.perf_counter()
    import numpy as np
    import pandas as pd
    import pandera.pandas as pa
    import python_calamine as pc
    from pandera.errors import SchemaErrors
    sys.path.insert(0, str(ROOT))
    from tasks.core.durable import sync_folder
    from tasks.reading.readers import read_sheets
    imports = time.perf_counter() - t_imp

    out = folder / ("baseline-equal" if equal else "baseline")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    phases: dict[str, float] = {}

    # configuration: the units (name -> code, kind) and the form
    units = _load_yaml(folder / "config" / "units.yaml")["units"]
    by_name = {u["name"]: (u["code"], u["kind"]) for u in units}
    fields = form_fields(folder / "config")
    counts = [f for f in fields if f.get("kind", "count") == "count"]
    texts = [f for f in fields if f.get("kind") == "text"]
    camp = _load_yaml(folder / "config" / "campaigns" / f"{CAMPAIGN}.yaml")
    key_of = {f["label"]: f["key"] for f in fields}  # the header is the label (unit)
    key_of["填报单位"] = "_unit"
    phases["config"] = time.perf_counter() - t0

    # archive + read, one file at a time
    t = time.perf_counter()
    archive = out / "archive"
    records: list[dict] = []
    read_s = 0.0
    archive.mkdir(parents=True)
    for i, path in enumerate(sorted((folder / "returns").iterdir()), 1):
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        target = archive / sha[:2] / sha
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _write(target, data)
        if equal and i % CHUNK == 0:
            sync_folder(archive)
        r0 = time.perf_counter()
        if equal:  # the product's reader, with its guards
            rows = [["" if v is None else v for v in row] for row in read_sheets(path)[0].rows]
        elif path.suffix == ".xlsx":
            wb = pc.CalamineWorkbook.from_path(str(path))
            rows = wb.get_sheet_by_index(0).to_python()
            wb.close()
        else:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = list(csv.reader(fh))
        read_s += time.perf_counter() - r0
        head, vals = rows[0], rows[1]
        rec = {"file": path.name, "sha256": sha}
        for h, v in zip(head, vals):
            key = key_of.get(re.sub(r"（[^（）]*）$", "", str(h)))
            if key:
                rec[key] = None if v == "" else v
        rec["code"], rec["kind"] = by_name.get(rec.get("_unit"), (None, None))
        records.append(rec)
    if equal:
        sync_folder(archive)
    phases["archive+read"] = time.perf_counter() - t
    phases["  of which read"] = read_s

    # one frame, one pass of vectorised checks
    t = time.perf_counter()
    df = pd.DataFrame.from_records(records)
    for f in counts:
        df[f["key"]] = pd.to_numeric(df[f["key"]], errors="coerce").astype("float64")
    errors = pa.DataFrameSchema({f["key"]: pa.Column(float, nullable=not f.get("required", True),
                                                     checks=pa.Check.ge(0)) for f in counts}
                                | {f["key"]: pa.Column(object, nullable=not f.get("required", True),
                                                       checks=pa.Check(lambda s, n=f.get("max_length") or 10**9:
                                                                       s.str.len() <= n))
                                   for f in texts})
    warns = pa.DataFrameSchema({f["key"]: pa.Column(float, nullable=True,
                                                    checks=pa.Check.le(f["warn_above"]))
                                for f in counts if f.get("warn_above") is not None})
    bad = np.zeros(len(df), bool)
    warned = np.zeros(len(df), bool)
    for schema, mark in ((errors, bad), (warns, warned)):
        try:
            schema.validate(df, lazy=True)
        except SchemaErrors as exc:
            idx = exc.failure_cases["index"].dropna().astype(int).unique()
            mark[idx] = True
    for check in camp["form"].get("checks", []):
        warned |= ~df.eval(check["rule"]).astype(bool).to_numpy()
    bad |= df["code"].isna().to_numpy()
    df["state"] = np.where(bad, "rejected", np.where(warned, "needs_explanation", "accepted"))
    phases["frame+checks"] = time.perf_counter() - t

    # group sums over the accepted returns
    t = time.perf_counter()
    keys = [f["key"] for f in counts]
    accepted = df[df["state"] == "accepted"]
    by_kind = accepted.groupby("kind")[keys].sum()
    total = accepted[keys].fillna(0).sum().round().astype("int64")
    (out / "sums.txt").write_text(by_kind.to_string() + "\n\n" + total.to_string() + "\n",
                                  encoding="utf-8")
    phases["group sums"] = time.perf_counter() - t

    # one small text file per return: its receipt
    t = time.perf_counter()
    outbox = out / "outbox"
    outbox.mkdir(parents=True)
    for i, (rec, state) in enumerate(zip(records, df["state"]), 1):
        _write(outbox / f"{rec['sha256'][:16]}.txt", f"{rec.get('code')} {rec['file']}: {state}\n".encode())
        if equal and i % CHUNK == 0:
            sync_folder(outbox)
    if equal:
        sync_folder(outbox)
    phases["receipts"] = time.perf_counter() - t

    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "imports": imports, "phases": phases, "peak_rss_mb": peak_rss_mb(),
            "states": df["state"].value_counts().to_dict(),
            "totals": {k: int(v) for k, v in total.items()}}


# ----------------------------------------------------------------------------- product
def _prefect_env(folder: Path) -> None:
    """Before Prefect is imported: a PREFECT_HOME of our own, the embedded default everywhere."""
    home = folder / "prefect-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for var in ("PREFECT_API_URL", "BULLETIN_SMTP_HOST", "BULLETIN_IMAP_HOST", "BULLETIN_DB_URL",
                "BULLETIN_HOME", "BULLETIN_CONFIG"):
        os.environ.pop(var, None)


def _children_peak_mb() -> float:
    """Peak RSS (VmHWM) of this process's live children: the Prefect server."""
    total = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] != me:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


def _pss_mb(pid: str) -> float:
    """The process's proportional set size: pages shared with its forked workers are counted
    once across them, so the sum over the tree is what the tree really holds."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


class TreeMemory:
    """Samples, every 0.1 s, the PSS of this process plus its descendants (the parsing
    workers), summed, leaving out the Prefect server (a child whose command line names
    uvicorn or ``prefect server``); keeps the largest sum, the largest per phase (set
    ``phase`` as the work moves on) and a timeline to set beside the run's log."""

    def __init__(self):
        import threading
        self.peak_mb = 0.0
        self.phase = ""
        self.phase_peaks: dict[str, float] = {}
        self.timeline: list[tuple[str, str, float, float]] = []  # (wall clock, phase, MB, this process's MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def write_timeline(self, path: Path) -> None:
        """One line a second (the largest sample of that second): time, phase, MB of the tree,
        MB of the flow's process alone (the rest is its parsing workers)."""
        per_second: dict[tuple[str, str], tuple[float, float]] = {}
        for clock, phase, mb, own in self.timeline:
            key = (clock, phase)
            per_second[key] = max(per_second.get(key, (0.0, 0.0)), (mb, own))
        path.write_text("time\tphase\tMB\tprocess MB\n" + "".join(
            f"{clock}\t{phase}\t{mb:.0f}\t{own:.0f}\n" for (clock, phase), (mb, own) in per_second.items()),
            encoding="utf-8")

    def _tree(self) -> list[str]:
        parents: dict[str, list[str]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            parents.setdefault(ppid, []).append(stat.parent.name)
        found, todo = [], [str(os.getpid())]
        while todo:
            pid = todo.pop()
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"uvicorn" in cmd or b"prefect server" in cmd:
                continue
            found.append(pid)
            todo += parents.get(pid, [])
        return found

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.1):
            each = {pid: _pss_mb(pid) for pid in self._tree()}
            mb, phase = sum(each.values()), self.phase
            self.peak_mb = max(self.peak_mb, mb)
            self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0.0), mb)
            self.timeline.append((time.strftime("%H:%M:%S"), phase, mb, each.get(me, 0.0)))


def run_product(folder: Path, profile: bool, dask: bool = False) -> dict:
    _prefect_env(folder)
    cluster = _local_dask_cluster() if dask else contextlib.nullcontext()
    with cluster:
        return _run_product(folder, profile, cluster if dask else None)


def _local_dask_cluster():
    """A Dask cluster on this machine (one single-threaded worker process per CPU the product's
    own path would use), named to the product through ``BULLETIN_DASK_ADDRESS``."""
    import distributed

    from tasks.reading.parallel import workers_wanted
    say(f"  product: starting a local Dask cluster of {workers_wanted()} worker processes")
    cluster = distributed.LocalCluster(n_workers=workers_wanted(), threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    os.environ["BULLETIN_DASK_ADDRESS"] = cluster.scheduler_address
    return cluster


def _run_product(folder: Path, profile: bool, cluster) -> dict:
    sys.path.insert(0, str(ROOT))
    t = time.perf_counter()
    from prefect import flow

    from flows.collect_returns import collect_returns
    from flows.compile_bulletin import compile_bulletin
    imports = time.perf_counter() - t

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    say("  product: starting the Prefect server (a trivial flow run)")
    t = time.perf_counter()
    warm_up()
    prefect_start = time.perf_counter() - t
    t = time.perf_counter()
    warm_up()
    trivial_flow = time.perf_counter() - t

    home = folder / ("home-dask" if cluster else "home")
    shutil.rmtree(home, ignore_errors=True)
    inbox = home / "inbox" / CAMPAIGN
    inbox.mkdir(parents=True)
    for p in (folder / "returns").iterdir():
        os.link(p, inbox / p.name)  # the flow moves the links to processed/; returns/ stays
    args = dict(home=str(home), config_dir=str(folder / "config"))
    profilers = {}
    if profile:
        import cProfile
        profilers = {"collect": cProfile.Profile(), "compile": cProfile.Profile()}
    say(f"  product: collect_returns on {len(list(inbox.iterdir())):,} returns")
    with TreeMemory() as memory:
        memory.phase = "collect"
        t = time.perf_counter()
        with _profiled(profilers.get("collect"), folder, "collect"):
            collected = collect_returns(CAMPAIGN, now=dt.datetime.fromisoformat(COLLECT_AT), **args)
        t_collect = time.perf_counter() - t
        say(f"  product: collect {t_collect:.1f} s; compile_bulletin")
        memory.phase = "compile"
        t = time.perf_counter()
        with _profiled(profilers.get("compile"), folder, "compile"):
            compiled = compile_bulletin(CAMPAIGN, now=dt.datetime.fromisoformat(COMPILE_AT), **args)
        t_compile = time.perf_counter() - t
    say(f"  product: compile {t_compile:.1f} s")
    memory.write_timeline(folder / "product-memory.tsv")

    # untimed: what the product decided and totalled, to compare with the baseline
    from tasks.bulletin.compile import merge_accepted, totals
    from tasks.core.config import load_config
    from tasks.core.ledger import Ledger
    from tasks.reading.parallel import workers_wanted
    merged = merge_accepted(Ledger(home), load_config(folder / "config", CAMPAIGN))
    eml = sum(1 for _ in (home / "outbox").glob("*.eml"))
    return {"seconds": t_collect + t_compile, "collect": t_collect, "compile": t_compile,
            "imports": imports, "prefect_start": prefect_start, "trivial_flow": trivial_flow,
            "peak_rss_mb": peak_rss_mb(), "tree_peak_mb": memory.peak_mb,
            "tree_peak_mb_by_phase": memory.phase_peaks,
            "server_peak_rss_mb": _children_peak_mb(),
            "workers": workers_wanted(),  # forked processes for parsing
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "states": collected["decided"], "receipts": collected["receipts"], "eml_files": eml,
            "bulletin_version": compiled["version"],
            "totals": {k: int(v) for k, v in totals(merged.numbers).items()}, "profiled": profile,
            "dask": cluster.scheduler_address if cluster else None}


@contextlib.contextmanager
def _profiled(profiler, folder: Path, step: str):
    """Run the block under cProfile (when given); write product-<step>.prof and a top list."""
    if profiler is None:
        yield
        return
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        import pstats
        profiler.dump_stats(folder / f"product-{step}.prof")
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.sort_stats("cumulative").print_stats(80)
        stats.sort_stats("tottime").print_stats(40)
        (folder / f"product-{step}-profile.txt").write_text(buf.getvalue(), encoding="utf-8")


# ----------------------------------------------------------------------------- driver
def child_main(role: str, folder: Path, profile: bool, progress_fd: int | None) -> None:
    global _progress
    if progress_fd is not None:
        _progress = os.fdopen(progress_fd, "w", buffering=1)
    result = (run_product(folder, profile, dask=role == "product-dask") if role.startswith("product")
              else run_baseline(folder, equal=role == "baseline-equal"))
    (folder / f"{role}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def run_child(role: str, folder: Path, profile: bool) -> dict:
    fd = os.dup(2)
    log = folder / f"{role}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--dir", str(folder),
           "--progress-fd", str(fd)] + (["--profile"] if profile else [])
    try:
        with open(log, "wb") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, pass_fds=(fd,),
                                cwd=folder).returncode
    finally:
        os.close(fd)
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{role} run failed (exit {rc}); end of {log}:\n{tail}")
    return json.loads((folder / f"{role}.json").read_text(encoding="utf-8"))


def bench_one(base: Path, n: int, xlsx_share: float, profile: bool, dask: bool = False) -> dict:
    folder = base / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"N={n:,}: generating config ({n:,} units) and returns ({xlsx_share:.0%} .xlsx) in {folder}")
    t = time.perf_counter()
    made = generate(folder, n, xlsx_share)
    made["seconds"] = time.perf_counter() - t
    say(f"N={n:,}: generated {made['xlsx']:,} .xlsx + {made['csv']:,} .csv, "
        f"{made['bytes'] / 2**20:.1f} MB in {made['seconds']:.1f} s")
    say(f"N={n:,}: baseline")
    load_before = os.getloadavg()[0]
    base_r = run_child("baseline", folder, False)
    say(f"N={n:,}: baseline {base_r['seconds']:.2f} s; baseline with the product's obligations")
    equal_r = run_child("baseline-equal", folder, False)
    say(f"N={n:,}: equal-obligation baseline {equal_r['seconds']:.2f} s")
    say(f"N={n:,}: product (Prefect logs: {folder / 'product.log'})")
    prod_r = run_child("product", folder, profile)
    same = base_r["states"] == prod_r["states"] and base_r["totals"] == prod_r["totals"]
    same = same and equal_r["states"] == base_r["states"] and equal_r["totals"] == base_r["totals"]
    dask_r = None
    if dask:
        say(f"N={n:,}: product reading on a local Dask cluster (logs: {folder / 'product-dask.log'})")
        dask_r = run_child("product-dask", folder, False)
        same = same and dask_r["states"] == prod_r["states"] and dask_r["totals"] == prod_r["totals"]
    return {"dask": dask_r, "n": n, "generated": made, "baseline": base_r, "baseline_equal": equal_r,
            "fields": len(form_fields(folder / "config")),
            "product": prod_r, "ratio_equal": prod_r["seconds"] / equal_r["seconds"],
            "load_average": [load_before, os.getloadavg()[0]],
            "ratio": prod_r["seconds"] / base_r["seconds"], "same_result": same, "folder": str(folder)}


def source_revision() -> str:
    """The product's commit (and whether the work tree differs from it), when git can tell."""
    try:
        git = ["git", "-C", str(ROOT)]
        rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        return rev + (f" + {len(dirty)} uncommitted file(s)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return f"{ROOT} (not a git work tree)"


def report(results: list[dict]) -> str:
    lines = [f"bench/collect.py — {dt.datetime.now().astimezone().isoformat(timespec='seconds')}, "
             f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, source {source_revision()}", ""]
    head = (f"{'N':>8} {'product s':>10} {'(collect':>9} {'+ compile)':>10} {'equal s':>8} {'ratio':>6} "
            f"{'bare s':>7} {'ratio':>6} {'returns/s':>9} {'figures/s':>9} {'mem MB':>7} {'server MB':>9}")
    lines += [head, "-" * len(head)]
    for r in results:
        p, b, e = r["product"], r["baseline"], r["baseline_equal"]
        figures = r["n"] * r["fields"]
        lines.append(f"{r['n']:>8,} {p['seconds']:>10.2f} {p['collect']:>9.2f} {p['compile']:>10.2f} "
                     f"{e['seconds']:>8.2f} {r['ratio_equal']:>6.2f} {b['seconds']:>7.2f} {r['ratio']:>6.2f} "
                     f"{r['n'] / p['seconds']:>9.0f} {figures / p['seconds']:>9.0f} "
                     f"{p['tree_peak_mb']:>7.0f} {p['server_peak_rss_mb']:>9.0f}")
    lines.append("")
    for r in results:
        p, b, e = r["product"], r["baseline"], r["baseline_equal"]
        verdict = "meets" if r["ratio_equal"] <= TARGET_RATIO else "misses"
        lines.append(f"N={r['n']:,}: ratio to the equal-obligation baseline {r['ratio_equal']:.2f} {verdict} "
                     f"the target ≤ {TARGET_RATIO}; to the bare baseline {r['ratio']:.2f}"
                     f"{' (profiled run: timings inflated by cProfile)' if p['profiled'] else ''}; "
                     f"same decisions and totals as both baselines: {'yes' if r['same_result'] else 'NO'}")
        lines.append(f"  memory: product process + parsing workers {p['tree_peak_mb']:.0f} MB at peak (PSS summed, "
                     f"sampled every 0.1 s; the process's own peak RSS {p['peak_rss_mb']:.0f} MB), Prefect server apart "
                     f"{p['server_peak_rss_mb']:.0f} MB; baselines {b['peak_rss_mb']:.0f} MB (bare), "
                     f"{e['peak_rss_mb']:.0f} MB (equal); target < {MEMORY_TARGET_MB} MB at 100,000")
        phases = p.get("tree_peak_mb_by_phase") or {}
        if phases:
            lines.append("  memory by phase: " + ", ".join(f"{k} {v:.0f} MB" for k, v in phases.items())
                         + " (a line a second in n<N>/product-memory.tsv beside product.log, with --keep or --dir)")
        lines.append(f"  product: {p['workers']} worker process(es) for parsing (the baselines use one "
                     f"process); decisions {p['states']}, receipts {p['receipts']}, .eml files "
                     f"{p['eml_files']:,}, bulletin v{p['bulletin_version']}")
        lines.append(f"  apart: imports product {p['imports']:.2f} s / baseline {b['imports']:.2f} s, "
                     f"Prefect server start (first trivial flow run) {p['prefect_start']:.2f} s, "
                     f"a later trivial flow run {p['trivial_flow']:.2f} s")
        for name, x in (("bare", b), ("equal", e)):
            lines.append(f"  {name} baseline phases: " + ", ".join(f"{k.strip()} {v:.2f} s"
                                                                  for k, v in x["phases"].items()))
        if r.get("dask"):
            d = r["dask"]
            lines.append(f"  on a local Dask cluster ({d['workers']} single-threaded worker processes): collect "
                         f"{d['collect']:.2f} s against {p['collect']:.2f} s with forked workers "
                         f"({d['collect'] / p['collect']:.2f}x), compile {d['compile']:.2f} s; memory "
                         f"{d['tree_peak_mb']:.0f} MB (this process, the scheduler and the Dask workers); "
                         f"same decisions and totals: {'yes' if d['states'] == p['states'] and d['totals'] == p['totals'] else 'NO'}")
        g = r["generated"]
        lines.append(f"  1-min load average before the baselines {r['load_average'][0]:.2f}, "
                     f"after the product {r['load_average'][1]:.2f} (other work on the machine skews both)")
        lines.append(f"  generated {g['xlsx']:,} .xlsx + {g['csv']:,} .csv ({g['bytes'] / 2**20:.1f} MB) "
                     f"in {g['seconds']:.1f} s; folder {r['folder']}")
    lines.append("")
    lines.append("equal: the baseline keeping the product's obligations (durable archive and receipts, one "
                 "syncfs per 500 files; the product's guarded reader); bare: the same work without them.")
    lines.append("figures/s: returns x counted and text fields of the form, per second of the product's run.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 100000], help="sizes (default 10000 100000)")
    ap.add_argument("--xlsx-share", type=float, default=0.5,
                    help="share of .xlsx returns up to N=10,000 (default 0.5); larger N are .csv only")
    ap.add_argument("--profile", action="store_true",
                    help="run the product under cProfile; writes product-{collect,compile}.prof and -profile.txt")
    ap.add_argument("--dir", type=Path, help="work folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--dask", action="store_true",
                    help="also run the product reading on a local Dask cluster (BULLETIN_DASK_ADDRESS) and compare")
    ap.add_argument("--child", choices=["baseline", "baseline-equal", "product", "product-dask"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--progress-fd", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child_main(a.child, a.dir, a.profile, a.progress_fd)
        return 0
    base = a.dir or Path(tempfile.mkdtemp(prefix="bulletin-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    keep = a.keep or a.profile or a.dir is not None
    sizes = [(n, a.xlsx_share if n <= 10_000 else 0.0) for n in a.n]
    results = []
    try:
        for n, share in sizes:
            results.append(bench_one(base, n, share, a.profile, a.dask))
            say(f"N={n:,}: product {results[-1]['product']['seconds']:.2f} s, "
                f"ratio {results[-1]['ratio_equal']:.2f} (equal obligations), {results[-1]['ratio']:.2f} (bare)")
    finally:
        if results:
            print(report(results), flush=True)
            if a.json:
                a.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if all(r["same_result"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
