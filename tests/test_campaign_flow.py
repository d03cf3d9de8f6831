"""Integration: request → collect → compile → approve → send through Prefect, against a real
SMTP server on 127.0.0.1, checking what the server received."""

from __future__ import annotations

import datetime as dt
import email
from email import policy

import pytest
from pg_server import postgres_server, postgres_url  # noqa: F401 - the fixtures

from flows.demo import build_returns, drop

pytestmark = pytest.mark.usefixtures("prefect_harness")
CAMPAIGN = "energy-week-2023"


def _parsed(server):
    return [email.message_from_bytes(m.data, policy=policy.default) for m in server.messages]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_whole_campaign_over_smtp(database, tmp_path, config, config_dir, smtp_env, monkeypatch, request):
    """The same campaign on the default SQLite ledger and on PostgreSQL (``BULLETIN_DB_URL``),
    forked reading workers included."""
    import flows.collect_returns as collect_module
    from flows.collect_returns import collect_returns
    from flows.compile_bulletin import compile_bulletin
    from flows.publish_bulletin import publish_bulletin
    from flows.request_returns import request_returns
    from tasks.bulletin.approval import decide
    from tasks.core.ledger import Ledger
    from tasks.mail.notices import bulletin_recipients

    server = smtp_env
    url = None
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("BULLETIN_DB_URL", url)
    cal = config.campaign.calendar
    args = dict(home=str(tmp_path), config_dir=str(config_dir))

    # requests: one per unit, each with its own workbook, marked automatic
    result = request_returns(CAMPAIGN, now=cal.opens_at, **args)
    assert result["sent"] == len(config.units)
    requests = _parsed(server)
    assert len(requests) == len(config.units)
    first = requests[0]
    assert first["Auto-Submitted"] == "auto-generated"
    assert "报送通知" in str(first["Subject"])
    attachment = next(p for p in first.iter_attachments())
    assert attachment.get_filename().endswith(".xlsx") and config.units[0].name in attachment.get_filename()
    assert first["To"].addresses[0].addr_spec == config.units[0].contacts[0].email
    assert first["To"].addresses[0].display_name == config.units[0].contacts[0].name
    # a second run sends nothing new
    assert request_returns(CAMPAIGN, now=cal.opens_at, **args).get("sent", 0) == 0
    assert len(server.messages) == len(config.units)
    # --force resends to the units asked for, and says so
    forced = request_returns(CAMPAIGN, units=["210100"], force=True, now=cal.opens_at, **args)
    assert forced["sent"] == 1 and len(server.messages) == len(config.units) + 1
    resent = _parsed(server)[-1]
    assert str(resent["Subject"]).startswith("【重发】") and "重新发送" in resent.get_body(("plain",)).get_content()

    # three returns arrive: two good, one broken
    returns = build_returns(config)
    inbox = tmp_path / "inbox" / CAMPAIGN
    inbox.mkdir(parents=True)
    good, broken_code = ["210100", "SZ001"], "210300"
    for code in good:
        drop(config, inbox, returns[code], "generated")
    bad = returns[broken_code]
    bad.values["banners"] = "-5"
    drop(config, inbox, bad, "generated")
    before = len(server.messages)
    # these three are read by forked workers during the intake, as a large batch would be
    monkeypatch.setattr(collect_module, "PARALLEL_FROM", 2)
    monkeypatch.setenv("BULLETIN_WORKERS", "2")
    monkeypatch.setattr(collect_module, "RECEIPT_CHUNK", 2)  # receipts by batches, as many would be
    outcome = collect_returns(CAMPAIGN, now=cal.deadline_at - dt.timedelta(days=2), **args)
    assert outcome["decided"] == {"accepted": 2, "rejected": 1} and outcome["receipts"] == {"sent": 3}
    receipts = _parsed(server)[before:]
    assert len(receipts) == 3 and len({m["Message-ID"] for m in receipts}) == 3
    rejected = next(m for m in receipts if "未通过" in str(m["Subject"]))
    text = rejected.get_body(preferencelist=("plain",)).get_content()
    assert "悬挂横幅" in text and "-5" in text and "B7" in text and "应为非负整数" in text
    assert not list(inbox.iterdir()), "taken-in entries leave the drop folder"

    # compile twice: one version
    first_compile = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    again = compile_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    assert (first_compile["version"], again["version"], again["created"]) == (1, 1, False)

    # unapproved: nothing goes out
    before = len(server.messages)
    assert publish_bulletin(CAMPAIGN, now=cal.compile_moment, **args)["approval"] == "pending"
    assert len(server.messages) == before

    ledger = Ledger(tmp_path, url)
    decide(ledger, CAMPAIGN, by="测试协调人", approve=True, note="同意", now=cal.compile_moment)
    import flows.publish_bulletin as publish_module
    monkeypatch.setattr(publish_module, "SEND_CHUNK", 3)  # sent by batches, as a large audience is
    sent = publish_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    people = bulletin_recipients(config)
    assert sent["sent"] == len(people)
    mails = _parsed(server)[before:]
    assert len(mails) == len(people)
    assert sorted(m["To"].addresses[0].addr_spec for m in mails) == sorted(p.email for p in people)
    one = mails[0]
    assert one["Auto-Submitted"] is None  # the bulletin itself is not automatic mail
    html = one.get_body(preferencelist=("html",)).get_content()
    plain = one.get_body(preferencelist=("plain",)).get_content()
    assert "<html" not in plain and "工作简讯" in plain
    docx = [p for p in one.iter_attachments() if p.get_filename().endswith(".docx")]
    assert len(docx) == 1 and docx[0].get_payload(decode=True)[:2] == b"PK"
    for part in one.walk():
        if part.get("Content-ID"):
            assert f"cid:{part['Content-ID'].strip('<>')}" in html
    # a unit's contact gets its own copy (its block on top); leaders and press the bulletin alone
    contacts = {u.contacts[0].email: u.name for u in config.units}
    for m in mails:
        to = m["To"].addresses[0].addr_spec
        mine = m.get_body(preferencelist=("plain",)).get_content()
        mine_html = m.get_body(preferencelist=("html",)).get_content()
        if to in contacts:
            assert mine.startswith(f"【{contacts[to]}：本单位报送情况】") and f"{contacts[to]}：本单位报送情况" in mine_html
        else:
            assert "本单位报送情况" not in mine and "本单位报送情况" not in mine_html
    # the totals in the mail equal the sums of the accepted returns
    posters = sum(returns[c].exact["posters"] for c in good)
    assert f";\">{posters}</td>" in html.replace("\r\n", "")

    # a re-run sends nothing twice
    again_sent = publish_bulletin(CAMPAIGN, now=cal.compile_moment, **args)
    assert again_sent.get("sent", 0) == 0 and len(server.messages) == before + len(people)
    # everything above was kept in the ledger the run was pointed at
    assert ledger.url.startswith(database)
    assert [(s.unit_code, s.state) for s in ledger.submissions(CAMPAIGN)] == [
        (code, "accepted") for code in good] + [(broken_code, "rejected")]
    assert not (tmp_path / "ledger.db").exists() if url else (tmp_path / "ledger.db").exists()


def test_completeness_artifact_is_bounded(tmp_path, config, config_dir, monkeypatch):
    """A campaign of many units: the artifact lists units needing attention first, up to a
    bound, and says where the whole list is."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import flows.common as common
    from flows.collect_returns import collect_returns

    monkeypatch.setattr(common, "ARTIFACT_ROWS", 5)
    collect_returns(CAMPAIGN, now=config.campaign.calendar.opens_at, home=str(tmp_path),
                    config_dir=str(config_dir))

    async def latest():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{CAMPAIGN}-completeness"])), limit=50)
            return max(found, key=lambda a: a.created)

    artifact = asyncio.run(latest())
    rows = artifact.data if isinstance(artifact.data, list) else __import__("json").loads(artifact.data)
    assert len(rows) == 5 and all(r["状态"] == "未报" for r in rows)
    assert f"应报{len(config.units)}家" in artifact.description
    assert f"全部单位见 bulletin status {CAMPAIGN}" in artifact.description
