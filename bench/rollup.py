"""Roll-up benchmark (逐级上报): three levels of offices, each running its own round with the
real flows, each approved result going up as its office's return to the level above.

    python bench/rollup.py                                   # 2 provinces x 3 cities x 50 (about 2 min)
    python bench/rollup.py --provinces 1 --cities 2 --institutions 1730   # two full-size cities
    python bench/rollup.py --full --dir /var/tmp/rollup      # 31 x 11 x 1,730 = 589,930 institutions
    python bench/rollup.py --dir /var/tmp/rollup             # again: resumes where it stopped

Offices: the centre (``centre``), P provinces (``prov-PP``), C cities per province
(``city-PPCC``), I institutions per city. Each office has a config folder and a home of its own
under ``<dir>/offices/<id>/`` (SQLite ledger, file outbox); every office's campaign has the
2023 form, and ``reports_to`` names its parent's campaign, its code there and the parent's
drop folder (all on this host). A city's institutions return UTF-8 .csv files (all valid; the
sums are kept to check the centre's totals). Each office runs, in this one process under
Prefect's ephemeral server: ``collect_returns`` (archive, read, check, decide, one receipt per
return), ``compile_bulletin``, an approval in the ledger, ``publish_bulletin`` (its bulletin
to one leader, then the return upward). Levels run bottom up: all cities, then each province
(its cities' returns in its drop folder), then the centre; the lower levels are batched in the
same process, one office after another. An office that finished leaves ``done.json``: a
later run with the same ``--dir`` skips it, so a long run can be stopped (``--minutes``, or
Ctrl+C) and resumed. Above the cities the forms have no ``warn_above`` (a city's total is
far above what one institution reports). Charts, personal copies and the PDF are off unless
``--pdf`` (the PDF as the signed copy costs about 2 s per office).

Printed: per level, offices, returns, seconds (total, median and slowest office) and returns
per second; peak memory of this process (its PSS with any parsing workers, sampled; the
Prefect server apart); whether the centre's totals equal the sum of every institution's
figures; and, when the run was scaled down, an estimate for the full size, labelled as such.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import ROOT, TreeMemory, _load_yaml, _prefect_env, header_label, peak_rss_mb, say  # noqa: E402

COLLECT_AT = "2023-09-25T10:00:00+08:00"
COMPILE_AT = "2023-10-09T09:00:00+08:00"
FULL = {"provinces": 31, "cities": 11, "institutions": 1730}  # 589,930 institutions


# ----------------------------------------------------------------------------- offices
def office_id(level: str, p: int = 0, c: int = 0) -> str:
    return {"centre": "centre", "province": f"prov-{p:02d}", "city": f"city-{p:02d}{c:02d}"}[level]


def unit_code(level: str, p: int, c: int = 0) -> str:
    """The office's code in its parent's list."""
    return f"P{p:02d}" if level == "province" else f"C{p:02d}{c:02d}"


def institution_name(p: int, c: int, i: int) -> str:
    return f"单位{p:02d}{c:02d}{i:05d}"


def write_office(base: Path, campaign: dict, office: str, units: list[dict], parent: tuple[str, str] | None,
                 leaf: bool, pdf: bool) -> None:
    """``offices/<office>/config`` (units, lists, the campaign with ``reports_to``) and the
    home's drop folder (where its children's returns arrive)."""
    import yaml
    folder = base / "offices" / office
    config = folder / "config"
    (config / "campaigns").mkdir(parents=True, exist_ok=True)
    (folder / "home" / "inbox" / office).mkdir(parents=True, exist_ok=True)
    dump = lambda data, path: path.write_text(  # noqa: E731
        yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=200), encoding="utf-8")
    dump({"units": units}, config / "units.yaml")
    dump({"lists": {"leaders": {"title": "领导", "role": "报", "members": [
        {"name": f"{office}领导", "email": f"{office}-leader@example.org"}]}}}, config / "lists.yaml")
    form = json.loads(json.dumps(campaign["form"]))
    if not leaf:
        for f in form["fields"]:
            f.pop("warn_above", None)
    camp = {"name": f"{office}节能宣传周报送", "units": "all",
            "coordinators": [{"name": f"{office}协调人", "email": f"{office}@example.org"}],
            "calendar": campaign["calendar"], "form": form,
            "bulletin": {"title": f"{office}节能宣传周工作简讯", "issuer": office, "lead": f"{office}汇总。",
                         "distribution": ["leaders"], "charts": False, "personal_copies": False, "pdf": pdf,
                         "year_over_year": False, "timeliness": False}}
    if parent:
        parent_office, code = parent
        camp["reports_to"] = {"campaign": parent_office, "unit": code,
                              "config": f"../../{parent_office}/config",
                              "drop_folder": str((base / "offices" / parent_office / "home" / "inbox"
                                                  / parent_office).resolve())}
    dump(camp, config / "campaigns" / f"{office}.yaml")


def _unit(code: str, name: str, kind: str) -> dict:
    low = code.lower()
    return {"code": code, "name": name, "kind": kind,
            "contacts": [{"name": f"{name}联系人", "email": f"{low}@example.org"}],
            "supervisor": {"name": f"{name}负责人", "email": f"{low}-leader@example.org"}}


def set_up(base: Path, provinces: int, cities: int, institutions: int, pdf: bool) -> None:
    """Every office's config and drop folder (kept: a resumed run finds them)."""
    if (base / "plan.json").is_file():
        return
    campaign = _load_yaml(ROOT / "config" / "campaigns" / "energy-week-2023.yaml")
    write_office(base, campaign, "centre",
                 [_unit(unit_code("province", p), f"省{p:02d}", "city") for p in range(1, provinces + 1)], None,
                 False, pdf)
    for p in range(1, provinces + 1):
        prov = office_id("province", p)
        write_office(base, campaign, prov,
                     [_unit(unit_code("city", p, c), f"市{p:02d}{c:02d}", "city") for c in range(1, cities + 1)],
                     ("centre", unit_code("province", p)), False, pdf)
        for c in range(1, cities + 1):
            write_office(base, campaign, office_id("city", p, c),
                         [_unit(f"I{p:02d}{c:02d}{i:05d}", institution_name(p, c, i), "department")
                          for i in range(1, institutions + 1)],
                         (prov, unit_code("city", p, c)), True, pdf)
    (base / "plan.json").write_text(json.dumps({"provinces": provinces, "cities": cities,
                                                "institutions": institutions, "pdf": pdf}), encoding="utf-8")


def drop_institution_returns(base: Path, campaign: dict, p: int, c: int, institutions: int) -> dict[str, int]:
    """The city's institutions' .csv returns into its drop folder; their figures summed."""
    fields = campaign["form"]["fields"]
    counted = [f for f in fields if f.get("kind") != "text"]
    inbox = base / "offices" / office_id("city", p, c) / "home" / "inbox" / office_id("city", p, c)
    rng = random.Random(p * 1000 + c)
    sums = {f["key"]: 0 for f in counted}
    header = ["填报单位"] + [header_label(f) for f in fields]
    for i in range(1, institutions + 1):
        values = {f["key"]: rng.randint(0, max(1, (f.get("warn_above") or 1000) // 3)) for f in counted}
        values["trainings"] = rng.randint(0, 16)
        values["participants"] = rng.randint(100, 5000)  # >= trainings: the cross-check holds
        for k, v in values.items():
            sums[k] += v
        name = institution_name(p, c, i)
        values["activities"] = f"{name}开展节能宣传周活动，举办培训{values['trainings']}场。"
        values["highlights"] = ""
        with open(inbox / f"{name}-报送表.csv", "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerow([name] + [values[f["key"]] for f in fields])
    return sums


# ----------------------------------------------------------------------------- running
def run_office(base: Path, office: str, extra: dict | None = None) -> dict:
    """One office's round: collect, compile, approve, publish (and up). Written to done.json."""
    from flows.collect_returns import collect_returns
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    from tasks.bulletin.approval import decide
    from tasks.core.ledger import Ledger

    folder = base / "offices" / office
    args = {"home": str(folder / "home"), "config_dir": str(folder / "config")}
    t0 = time.perf_counter()
    collected = collect_returns(office, now=dt.datetime.fromisoformat(COLLECT_AT), **args)
    t1 = time.perf_counter()
    compile_bulletin(office, now=dt.datetime.fromisoformat(COMPILE_AT), **args)
    decide(Ledger(folder / "home"), office, by="基准测试", approve=True, note=None,
           now=dt.datetime.fromisoformat(COMPILE_AT))
    published = publish_bulletin(office, now=dt.datetime.fromisoformat(COMPILE_AT), **args)
    t2 = time.perf_counter()
    done = {"office": office, "collect": t1 - t0, "compile_publish": t2 - t1, "seconds": t2 - t0,
            "decided": collected["decided"], "returns": sum(collected["decided"].values()),
            "upward": published.get("upward"), **(extra or {})}
    (folder / "done.json").write_text(json.dumps(done, ensure_ascii=False), encoding="utf-8")
    return done


def _done(base: Path, office: str) -> dict | None:
    path = base / "offices" / office / "done.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run_all(base: Path, plan: dict, deadline: float, budget: int) -> tuple[dict[str, list[dict]], bool]:
    """Bottom up; skips finished offices; starts no new one after *deadline* or *budget* offices."""
    started = 0

    def may_start() -> bool:
        nonlocal started
        started += 1
        return time.monotonic() <= deadline and started <= budget

    campaign = _load_yaml(ROOT / "config" / "campaigns" / "energy-week-2023.yaml")
    levels: dict[str, list[dict]] = {"city": [], "province": [], "centre": []}
    P, C, n = plan["provinces"], plan["cities"], plan["institutions"]
    for p in range(1, P + 1):
        for c in range(1, C + 1):
            office = office_id("city", p, c)
            done = _done(base, office)
            if done is None:
                if not may_start():
                    return levels, False
                t = time.perf_counter()
                sums = drop_institution_returns(base, campaign, p, c, n)
                done = run_office(base, office, {"sums": sums, "generate": time.perf_counter() - t})
                say(f"  {office}: {done['returns']:,} returns in {done['seconds']:.1f} s "
                    f"(collect {done['collect']:.1f} s), up: {done['upward']}")
            levels["city"].append(done)
        office = office_id("province", p)
        done = _done(base, office)
        if done is None:
            if not may_start():
                return levels, False
            done = run_office(base, office)
            say(f"  {office}: {done['returns']} cities in {done['seconds']:.1f} s, up: {done['upward']}")
        levels["province"].append(done)
    done = _done(base, "centre")
    if done is None:
        if not may_start():
            return levels, False
        done = run_office(base, "centre")
    levels["centre"].append(done)
    say(f"  centre: {done['returns']} provinces in {done['seconds']:.1f} s")
    return levels, True


def centre_totals(base: Path) -> dict[str, int]:
    from tasks.bulletin.compile import merge_accepted, totals
    from tasks.core.config import load_config
    from tasks.core.ledger import Ledger
    folder = base / "offices" / "centre"
    merged = merge_accepted(Ledger(folder / "home"), load_config(folder / "config", "centre"))
    return {k: int(v) for k, v in totals(merged.numbers).items()}


def report(levels: dict[str, list[dict]], plan: dict, complete: bool, memory_mb: float, wall: float,
           base: Path) -> str:
    lines = [f"bench/rollup.py — {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
             f"{os.cpu_count()} CPUs; {plan['provinces']} provinces x {plan['cities']} cities x "
             f"{plan['institutions']:,} institutions = "
             f"{plan['provinces'] * plan['cities'] * plan['institutions']:,}", "",
             f"{'level':>9} {'offices':>8} {'returns':>10} {'total s':>9} {'median s':>9} {'slowest s':>10} "
             f"{'returns/s':>10}", "-" * 70]
    for level, done in levels.items():
        if not done:
            continue
        secs = [d["seconds"] for d in done]
        returns = sum(d["returns"] for d in done)
        lines.append(f"{level:>9} {len(done):>8,} {returns:>10,} {sum(secs):>9.1f} {statistics.median(secs):>9.2f} "
                     f"{max(secs):>10.2f} {returns / sum(secs):>10.1f}")
    lines += ["", f"wall time of this run {wall:.0f} s (returns generated apart: "
                  f"{sum(d.get('generate', 0) for d in levels['city']):.1f} s); peak memory of this process "
                  f"and its workers {memory_mb:.0f} MB (PSS, sampled; own peak RSS {peak_rss_mb():.0f} MB; "
                  "the Prefect server apart)"]
    if not complete:
        lines.append(f"stopped before the end (--minutes, --offices): run again with --dir {base} to resume")
        return "\n".join(lines)
    expected: dict[str, int] = {}
    for d in levels["city"]:
        for k, v in d["sums"].items():
            expected[k] = expected.get(k, 0) + v
    got = centre_totals(base)
    same = all(got.get(k) == v for k, v in expected.items())
    lines.append(f"the centre's totals equal the sum of every institution's figures: {'yes' if same else 'NO'}")
    if not same:
        lines.append(f"  expected {expected}\n  got      {got}")
    if any(plan[k] != v for k, v in FULL.items()) and plan["institutions"] < 500:
        lines.append("no estimate for the full size: run with --institutions 500 or more (1730 is full) for one")
    elif any(plan[k] != v for k, v in FULL.items()) and levels["province"]:
        fixed = statistics.median(d["seconds"] for d in levels["province"])  # an office with a handful of returns
        per_return = max(0.0, (statistics.median(d["seconds"] for d in levels["city"]) - fixed) / plan["institutions"])
        cities = FULL["provinces"] * FULL["cities"]
        estimate = cities * (fixed + per_return * FULL["institutions"]) + FULL["provinces"] * fixed + fixed
        lines.append(f"EXTRAPOLATED, not measured: the full size ({cities:,} cities x {FULL['institutions']:,} = "
                     f"{cities * FULL['institutions']:,} institutions) one office after another on this machine: "
                     f"about {estimate / 60:.0f} min ({fixed:.1f} s per office + {per_return * 1000:.2f} ms per return)")
    return "\n".join(lines) + ("" if same else "\nMISMATCH")


def _start_prefect() -> None:
    """A trivial flow run, so that the server's start is not counted in the first office."""
    from prefect import flow

    @flow(name="rollup-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provinces", type=int, default=2)
    ap.add_argument("--cities", type=int, default=3, help="per province")
    ap.add_argument("--institutions", type=int, default=50, help="per city")
    ap.add_argument("--full", action="store_true", help=f"the national size: {FULL}")
    ap.add_argument("--pdf", action="store_true", help="each office's bulletin PDF goes up as the signed copy")
    ap.add_argument("--dir", type=Path, help="work folder, kept (a second run resumes); default: a new temp folder")
    ap.add_argument("--minutes", type=float, default=90, help="start no office after this (default 90)")
    ap.add_argument("--offices", type=int, default=10**9, help="start at most this many offices in this run")
    a = ap.parse_args(argv)
    if a.full:
        a.provinces, a.cities, a.institutions = FULL["provinces"], FULL["cities"], FULL["institutions"]
    base = (a.dir or Path(tempfile.mkdtemp(prefix="bulletin-rollup-"))).resolve()
    base.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.minutes * 60
    set_up(base, a.provinces, a.cities, a.institutions, a.pdf)
    plan = json.loads((base / "plan.json").read_text(encoding="utf-8"))
    say(f"roll-up in {base}: {plan}")
    _prefect_env(base)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    sys.path.insert(0, str(ROOT))
    t = time.perf_counter()
    _start_prefect()
    say(f"Prefect's ephemeral server answered after {time.perf_counter() - t:.1f} s (not counted below)")
    started = time.perf_counter()
    with TreeMemory() as memory:
        levels, complete = run_all(base, plan, deadline, a.offices)
    text = report(levels, plan, complete, memory.peak_mb, time.perf_counter() - started, base)
    print(text)
    if a.dir is None and complete:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if complete and "MISMATCH" not in text else 1


if __name__ == "__main__":
    sys.exit(main())
