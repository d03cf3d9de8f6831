"""``bulletin demo``: the 2023 campaign end to end with simulated units, walking its calendar.

Most units return on time in assorted formats; 鞍山市 sends a broken return and then a
corrected one; 大连市 sends figures that raise warnings, then explains them; 葫芦岛市 is
late; 营口市 corrects its return after the deadline; 阜新市's highlights carry pasted spam (held
back for review, and its own copy says so); 省卫生健康委 never returns. 沈阳市 runs its own
round with five districts first: its approved result goes to the province by mail as 沈阳市's
return (逐级上报), and the province's bulletin counts it. In the 2022
round 省科技馆 did not return and 朝阳市 was late, so the bulletin compares 23 units like for
like. The demo checks the outcome and exits 0 only when the campaign ran as designed.
"""

from __future__ import annotations

import datetime as dt
import email
import contextlib
import os
import time
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from tasks.core.config import Config, load_config
from tasks.core.ledger import Ledger

from .context import BUNDLED_CONFIG, resolve_home
from .demo_units import (
    PHOTO_SCENES,
    SimulatedReturn,
    make_photo,
    narrative_for,
    spread_totals,
    write_csv,
    write_generated,
    write_long_xlsx,
    write_wide_xlsx,
)

CAMPAIGN = "energy-week-2023"
PREVIOUS = "energy-week-2022"
NEVER, LATE, BROKEN, WARNS = "SZ008", "211400", "210300", "210200"
CORRECTS_LATE = "210800"  # an on-time return corrected after the deadline
NEW_THIS_YEAR, LATE_LAST_YEAR = "SZ007", "211300"  # the 2022 round: missing, late
SPAM = "210900"  # 阜新市: its highlights carry injected spam
CITY, CITY_CAMPAIGN = "210100", "shenyang-2023"  # 沈阳市 and its own round (config/shenyang/)
FIRST_WAVE = ["210100", BROKEN, WARNS, "210400", "210500", "210600", "210700", "219000",
              "SZ001", "SZ002", "SZ003", "SZ004"]


class DemoError(Exception):
    pass


def new_demo_home(home: Path | None) -> Path:
    """``--home`` if given (refusing a non-empty one), else ``./var/demo-<timestamp>``."""
    if home is not None:
        path = resolve_home(home)
        if path.exists() and any(path.iterdir()):
            raise DemoError(f"demo: {path} is not empty; give a new or empty folder")
    else:
        path = resolve_home(None) / f"demo-{dt.datetime.now():%Y%m%d-%H%M%S}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def build_returns(config: Config) -> dict[str, SimulatedReturn]:
    figures = spread_totals(config.units)
    out = {}
    for i, unit in enumerate(config.units):
        exact = figures[unit.code]
        values: dict[str, object] = dict(exact)
        photos = [(f"{unit.name}-{PHOTO_SCENES[unit.code]}.jpg", f"{unit.name}{PHOTO_SCENES[unit.code]}")] \
            if unit.code in PHOTO_SCENES else []
        out[unit.code] = SimulatedReturn(unit, values, exact, narrative_for(unit, i), photos=photos)
    # a few units write numbers the way people do (each quirk where its unit takes part)
    if "210500" in out:
        out["210500"].values.update(posters=_fullwidth(exact_of(out, "210500", "posters")))
    if "210400" in out:
        out["210400"].values.update(banners=f"{exact_of(out, '210400', 'banners')}条")
    if "210100" in out:
        out["210100"].narrative["activities"] += "活动报道见 http://news.example.com/energy-week。"
    if SPAM in out:  # text pasted from a hijacked page (as in the reference): held back for review
        out[SPAM].narrative["highlights"] = "球盟会(中国)唯一官方网站"
    if WARNS in out:  # fewer participants than trainings: a warning the unit must explain
        dalian = out[WARNS]
        dalian.exact["participants"] = dalian.values["participants"] = max(1, dalian.exact["trainings"] - 2)
    return out


def exact_of(returns: dict[str, SimulatedReturn], code: str, key: str) -> int:
    return returns[code].exact[key]


def _fullwidth(n: int) -> str:
    return str(n).translate(str.maketrans("0123456789", "０１２３４５６７８９"))


def drop(config: Config, inbox: Path, r: SimulatedReturn, style: str, stamp: str = "") -> None:
    """Put one unit's return into the drop folder in the given format (photos in a folder)."""
    camp = config.campaign
    name = f"{r.unit.name}节能宣传周报表{stamp}"
    target = inbox
    if r.photos:
        target = inbox / f"{r.unit.name}报送材料{stamp}"
        target.mkdir(parents=True, exist_ok=True)
        for i, (file_name, caption) in enumerate(r.photos):
            make_photo(target / file_name, r.unit.code, seed=hash((r.unit.code, i)) & 0xFFFF)
    writers = {
        "generated": lambda p: write_generated(camp, r, p.with_suffix(".xlsx")),
        "wide-xlsx": lambda p: write_wide_xlsx(camp, r, p.with_suffix(".xlsx")),
        "long-xlsx": lambda p: write_long_xlsx(camp, r, p.with_suffix(".xlsx")),
        "gbk-csv": lambda p: write_csv(camp, r, p.with_suffix(".csv"), encoding="gbk", wide=False),
        "bom-csv": lambda p: write_csv(camp, r, p.with_suffix(".csv"), encoding="utf-8-sig", wide=True),
    }
    writers[style](target / name)


STYLES = {"219000": "wide-xlsx", "210500": "gbk-csv", "210800": "bom-csv", "SZ002": "long-xlsx"}


def run_previous_round(home: Path, config_dir: Path, returns: dict[str, SimulatedReturn]) -> None:
    """The 2022 campaign's returns (about 15% lower; 大连市 far lower, so its 2023 figure jumps)."""
    from .collect_returns import collect_returns
    config = load_config(config_dir, PREVIOUS)
    inbox = home / "inbox" / PREVIOUS
    inbox.mkdir(parents=True, exist_ok=True)
    deadline = config.campaign.calendar.deadline_at
    for late in (False, True):
        for code, r in returns.items():
            if code in (NEVER, NEW_THIS_YEAR) or (code == LATE_LAST_YEAR) != late:
                continue
            values = {k: int(v * 0.85) for k, v in r.exact.items()}
            if code == WARNS:  # far fewer posters, and as many participants as trainings
                values["posters"] = r.exact["posters"] // 4
                values["participants"] = max(values["participants"], values["trainings"])
            drop(config, inbox, SimulatedReturn(r.unit, values, values, r.narrative), "generated")
        collect_returns(PREVIOUS, now=deadline + dt.timedelta(days=2 if late else -1),
                        home=str(home), config_dir=str(config_dir))


@contextlib.contextmanager
def _environment(**values: str | None):
    """Environment variables set (None: unset) for the steps inside, as another office's
    process would have them; restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def district_returns(city_config: Config, city: SimulatedReturn) -> dict[str, SimulatedReturn]:
    """The districts' returns: 沈阳市's own figures shared out among them (so the city's
    roll-up is the return the province would have had from it), each its own narrative."""
    units = city_config.units
    out = {}
    for i, unit in enumerate(units):
        values = {k: v // len(units) + (v % len(units) if i == 0 else 0) for k, v in city.exact.items()}
        out[unit.code] = SimulatedReturn(unit, dict(values), values, narrative_for(unit, i))
    return out


def run_city_round(home: Path, config_dir: Path, city: SimulatedReturn) -> dict:
    """沈阳市's round with its districts, in its own home and config folder, by the same flows:
    request, returns, collect, compile, approval by the city's coordinator, publish. Publish
    mails the approved result to the province's intake mailbox as 沈阳市's return (from the
    address the province lists for 沈阳市); it is put into the province's Maildir here, as the
    province's mail server would."""
    from tasks.bulletin.approval import decide

    from .collect_returns import collect_returns
    from .compile_bulletin import compile_bulletin
    from .publish_bulletin import publish_bulletin
    from .request_returns import request_returns
    city_dir = config_dir / "shenyang"
    config = load_config(city_dir, CITY_CAMPAIGN)
    cal = config.campaign.calendar
    city_home = home / "levels" / "shenyang"
    args = dict(home=str(city_home), config_dir=str(city_dir))
    sender = load_config(config_dir, CAMPAIGN).unit_by_code[CITY].contacts[0].email
    with _environment(BULLETIN_MAILDIR=None, BULLETIN_MAIL_FROM=sender):
        request_returns(CITY_CAMPAIGN, now=cal.opens_at, **args)
        inbox = city_home / "inbox" / CITY_CAMPAIGN
        inbox.mkdir(parents=True, exist_ok=True)
        returns = district_returns(config, city)
        for r in returns.values():
            drop(config, inbox, r, "generated")
        collect_returns(CITY_CAMPAIGN, now=cal.deadline_at - dt.timedelta(days=1), **args)
        compile_bulletin(CITY_CAMPAIGN, now=cal.compile_moment, **args)
        decide(Ledger(city_home), CITY_CAMPAIGN, by=config.campaign.coordinators[0].name, approve=True,
               note="同意上报", now=cal.compile_moment)
        published = publish_bulletin(CITY_CAMPAIGN, now=cal.compile_moment, **args)
        again = publish_bulletin(CITY_CAMPAIGN, now=cal.compile_moment, **args)
    upward = [p for p in (city_home / "outbox").glob("*.eml") if "__upward__" in p.name]
    for path in upward:
        _deliver_to_maildir(_maildir(home), path.read_bytes(), "upward")
    return {"published": published, "again": again, "mails": len(upward), "home": city_home,
            "sums": {k: sum(r.exact[k] for r in returns.values()) for k in city.exact}}


def _maildir(home: Path) -> Path:
    """The province's intake mailbox, as a Maildir its mail server delivers into."""
    maildir = home / "maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return maildir


def run_demo(home: Path, config_dir: Path = BUNDLED_CONFIG) -> bool:
    """Walk the campaign's calendar; return True when everything came out as designed."""
    from .collect_returns import collect_returns
    from .compile_bulletin import compile_bulletin
    from .publish_bulletin import publish_bulletin
    from .request_returns import request_returns
    from .send_reminders import send_reminders

    started = time.monotonic()
    config = load_config(config_dir, CAMPAIGN)
    cal = config.campaign.calendar
    returns = build_returns(config)
    inbox = home / "inbox" / CAMPAIGN
    inbox.mkdir(parents=True, exist_ok=True)
    args = dict(home=str(home), config_dir=str(config_dir))
    at = lambda delta: cal.deadline_at + delta  # noqa: E731
    day = dt.timedelta(days=1)
    print(f"演示主目录 demo home: {home}")

    _say("上一轮（2022年）各单位已通过的报表，作为本轮的比较基数 the previous round")
    run_previous_round(home, config_dir, returns)

    _say(f"{cal.opens_at:%Y-%m-%d %H:%M} 发出报送通知 request")
    request_returns(CAMPAIGN, now=cal.opens_at, **args)

    _say("沈阳市先组织五个区县报送，批准后汇总作为沈阳市的报表报送省级 a city's own round, reported upward")
    os.environ["BULLETIN_MAILDIR"] = str(_maildir(home))  # the province's intake mailbox
    city_round = run_city_round(home, config_dir, returns[CITY])

    _say("第一批报表到达（含一份错误报表、一份需说明的报表）first returns")
    broken = SimulatedReturn(**{**returns[BROKEN].__dict__, "values": {
        **returns[BROKEN].values, "banners": "-5", "boards": "若干", "trainings": None}})
    warns = returns[WARNS]  # participants below trainings: a warning to explain
    for code in FIRST_WAVE:
        if code == CITY:  # its return is the city's round, in the mailbox
            continue
        r = broken if code == BROKEN else warns if code == WARNS else returns[code]
        drop(config, inbox, r, STYLES.get(code, "generated"))
    collect_returns(CAMPAIGN, now=at(-6 * day), **args)

    _say("截止前三天催报 reminder −3d")
    send_reminders(CAMPAIGN, now=at(-3 * day), **args)

    _say("第二批报表：更正后的报表、补充说明、其余单位 second returns")
    corrected_warns = SimulatedReturn(**{**warns.__dict__, "explanation":
                                         "培训以视频会议形式开展，参与人次按分会场数统计，数据已核实。"})
    drop(config, inbox, returns[BROKEN], "generated", stamp="（更正）")
    drop(config, inbox, corrected_warns, "generated", stamp="（补充说明）")
    for code in [u.code for u in config.units]:
        if code not in FIRST_WAVE and code not in (NEVER, LATE):
            drop(config, inbox, returns[code], STYLES.get(code, "generated"))
    collect_returns(CAMPAIGN, now=at(-2 * day), **args)

    for label, delta in (("截止前一天催报 −1d", -day), ("截止当天催报 0d", dt.timedelta(0)),
                         ("逾期督办（抄送分管领导）+2d", 2 * day)):
        _say(label)
        send_reminders(CAMPAIGN, now=at(delta), **args)
    _say("逾期报表到达，营口市截止后更正 a late return, a correction after the deadline")
    drop(config, inbox, returns[LATE], "generated")
    fixed = returns[CORRECTS_LATE]
    fixed.exact["posters"] = fixed.values["posters"] = fixed.exact["posters"] + 120
    drop(config, inbox, fixed, STYLES.get(CORRECTS_LATE, "generated"), stamp="（更正）")
    collect_returns(CAMPAIGN, now=at(3 * day), **args)

    _say(f"{cal.compile_moment:%Y-%m-%d %H:%M} 编制简讯 compile")
    first = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    again = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    signed = sign_off_by_mail(home, config, args)
    sent = signed.get("signoff", {}).get("bulletin", {})
    resent = publish_bulletin(CAMPAIGN, now=cal.compile_moment + dt.timedelta(hours=4), **args)
    return _verify(home, config, returns, first, again, sent, resent, city_round, time.monotonic() - started)


def sign_off_by_mail(home: Path, config: Config, args: dict) -> dict:
    """The two-level chain answered by mail: each approver replies to the request the system
    sent (read from the outbox) into the demo's Maildir, and ``collect`` reads the replies. An
    out-of-office reply comes first and approves nothing."""
    from .collect_returns import collect_returns
    compiled = config.campaign.calendar.compile_moment
    maildir = _maildir(home)
    os.environ["BULLETIN_MAILDIR"] = str(maildir)
    result: dict = {}
    for hour, level, answer in ((1, "审核", "同意。数据已核对。"), (2, "签发", "同意印发")):
        approver = next(a for a in config.campaign.bulletin.approvers if a.level == level)
        request = _latest_request(home, approver.email)
        _say(f"{level}：{approver.name}收到审批请求《{request['Subject']}》并回复“{answer}”（邮件）")
        if hour == 1:  # the approver's out-of-office robot answers first: it approves nothing
            _deliver_to_maildir(maildir, _reply(request, approver.email, "自动回复：我正在休假，同意请找办公室。",
                                                auto=True), "auto")
        _deliver_to_maildir(maildir, _reply(request, approver.email, answer), level)
        result = collect_returns(CAMPAIGN, now=compiled + dt.timedelta(hours=hour), **args)
    return result


def _latest_request(home: Path, email_address: str) -> EmailMessage:
    """The approval request the system sent to this approver (the outbox's ``.eml``)."""
    found = []
    for path in (home / "outbox").glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if msg["X-Bulletin-Step"] == "approval-request" and email_address in str(msg["To"]):
            found.append(msg)
    if not found:
        raise DemoError(f"no approval request was sent to {email_address}")
    return found[-1]


def _reply(request: EmailMessage, sender: str, text: str, auto: bool = False) -> bytes:
    """A reply as a mail client writes it: Re: subject, In-Reply-To and References, the
    original quoted below the answer."""
    reply = EmailMessage()
    reply["From"], reply["To"] = sender, str(request["From"])
    reply["Subject"] = f"回复：{request['Subject']}"
    reply["In-Reply-To"] = reply["References"] = str(request["Message-ID"])
    reply["Message-ID"] = make_msgid(domain="example.gov.cn")
    if auto:
        reply["Auto-Submitted"] = "auto-replied"
    quoted = "\n".join(f"> {line}" for line in request.get_body(("plain",)).get_content().splitlines())
    reply.set_content(f"{text}\n\n在 {request['Date']}，{request['From']} 写道：\n{quoted}\n")
    return bytes(reply)


def _deliver_to_maildir(maildir: Path, raw: bytes, tag: str) -> None:
    name = f"{time.time_ns()}.{tag}.demo"
    (maildir / "tmp" / name).write_bytes(raw)
    (maildir / "tmp" / name).rename(maildir / "new" / name)


def _bulletin_copies(home: Path) -> dict[str, tuple[Path, str]]:
    """The bulletin's copies in the file outbox: recipient -> (file, plain text)."""
    out = {}
    for path in sorted((home / "outbox").glob("*.eml")) if (home / "outbox").is_dir() else []:
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        if msg["X-Bulletin-Step"] == "bulletin":
            out[msg["To"].addresses[0].addr_spec] = (path, msg.get_body(("plain",)).get_content())
    return out


def _city_return(ledger: Ledger) -> tuple[str, str] | None:
    """(source, state) of the province's latest submission from 沈阳市."""
    from sqlalchemy import select

    from tasks.core.ledger import Submission
    with ledger.reading() as s:
        row = s.execute(select(Submission.source, Submission.state).where(
            Submission.campaign == CAMPAIGN, Submission.unit_code == CITY).order_by(Submission.id.desc())).first()
    return tuple(row) if row else None


def _events(ledger: Ledger, action: str) -> int:
    from sqlalchemy import func, select

    from tasks.core.ledger import Event
    with ledger.reading() as s:
        return s.scalar(select(func.count()).select_from(Event).where(Event.campaign == CAMPAIGN,
                                                                     Event.action == action))


def _verify(home: Path, config: Config, returns: dict[str, SimulatedReturn], first: dict, again: dict,
            sent: dict, resent: dict, city_round: dict, seconds: float) -> bool:
    from tasks.bulletin.approval import chain_state
    from tasks.bulletin.compile import merge_accepted, totals
    from tasks.bulletin.personal import block_count, read_blocks
    from tasks.bulletin.readers import gather
    from tasks.decisions.status import completeness, completeness_line
    ledger = Ledger(home)
    status = completeness(ledger, config, dt.datetime.now(dt.timezone.utc))
    chain = chain_state(ledger, config.campaign.id, first["version"], config.campaign.bulletin.approvers)
    merged = merge_accepted(ledger, config)
    sums = totals(merged.numbers)
    expected_sums = {k: sum(r.exact[k] for c, r in returns.items() if c != NEVER)
                     for k in sums.index}
    units = {u["code"]: u for u in status["units"]}
    checks = {
        "每家单位状态符合设计 unit states": status["missing"] == [NEVER] and status["accepted"] == len(config.units) - 1,
        "逾期单位 late unit": status["late"] == [LATE],
        "错误报表已更正 corrected return": units[BROKEN]["version"] == 2,
        "简讯合计等于各单位报表之和 totals": {k: int(v) for k, v in sums.items()} == expected_sums,
        "重复编制沿用同一版本 same version": again["version"] == first["version"] and not again["created"],
        "两级审批均由邮件答复完成 two levels signed off by mail":
            [d["level"] for d in chain["decisions"]] == ["审核", "签发"] and chain["due"] is None,
        "自动回复不计为审批 auto-reply ignored": len(chain["decisions"]) == 2
            and chain["decisions"][0]["note"] == "同意。数据已核对。" and _events(ledger, "mail.auto_reply") == 1,
        "简讯已发送 bulletin sent": sent.get("sent", 0) > 0 and not sent.get("failed"),
        "再次发送不重复 nothing sent twice": resent.get("sent", 0) == 0,
        "沈阳市汇总各区县报表，批准后报送一次 the city's round reported upward once":
            city_round["published"].get("upward") == "sent" and city_round["again"].get("upward") == "skipped"
            and city_round["mails"] == 1,
        "省级收到的沈阳市报表即市级汇总 the province counts the city's roll-up":
            _city_return(ledger) == ("imap", "accepted")
            and {k: int(merged.numbers.loc[CITY, k]) for k in city_round["sums"]} == city_round["sums"],
    }
    folder = Path(first["folder"])
    readers = gather(ledger, config, merged.numbers)
    yoy, states = readers.comparison, readers.states
    checks.update({
        "与上年同口径比较 year over year, like for like":
            yoy is not None and (yoy.both, yoy.new, yoy.dropped) == (len(config.units) - 2, 1, 0),
        "逾期、截止后更正、未报送 timeliness": (states[LATE].state, states[CORRECTS_LATE].state, states[NEVER].state)
            == ("late", "corrected", "missing") and readers.previous_round.counts["late"] == 1,
        "每家单位一份个性化内容 a block per unit": block_count(folder) == len(config.units),
        "图表与公文样式 PDF charts and the PDF": len(list((folder / "charts").glob("*.png"))) == 2
            and (folder / "bulletin.pdf").is_file(),
        "疑似垃圾信息未收录且告知本单位 spam held back, its unit told":
            "球盟会" not in (folder / "bulletin.txt").read_text(encoding="utf-8")
            and "待人工审核" in read_blocks(folder)[SPAM][1],
    })
    copies = _bulletin_copies(home)
    if copies:  # the file outbox (with an SMTP server the copies are in the recipients' mailboxes)
        units = {u.contacts[0].email: u.name for u in config.units}
        checks["各单位收到本单位版本，领导收到通用版 own copy per unit"] = all(
            (f"{units[to]}：本单位报送情况" in text) if to in units else ("本单位报送情况" not in text)
            for to, (_path, text) in copies.items())
    _say("演示结果 demo summary")
    print(f"简讯 bulletin: {folder}")
    for name in ("bulletin.html", "bulletin.txt", "bulletin.md", "bulletin.docx", "bulletin.pdf", "personal/index.html"):
        print(f"  {folder / name}")
    for code in (CORRECTS_LATE, NEW_THIS_YEAR, SPAM):
        unit = config.unit_by_code[code]
        path = copies.get(unit.contacts[0].email, (None, ""))[0]
        if path:
            print(f"  {unit.name}收到的简讯 copy for {unit.name}: {path}")
    print(f"沈阳市简讯 the city's bulletin: {city_round['home'] / 'bulletins' / CITY_CAMPAIGN / 'v1' / 'bulletin.html'}")
    outbox = home / "outbox"
    if outbox.is_dir():
        print(f"发件箱 outbox: {outbox} （{len(list(outbox.glob('*.eml')))} 封邮件）")
    print(completeness_line(status))
    for name, ok in checks.items():
        print(f"  [{'通过' if ok else '失败'}] {name}")
    print(f"用时 {seconds:.0f} 秒")
    return all(checks.values())

