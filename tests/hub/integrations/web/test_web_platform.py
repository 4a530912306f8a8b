"""The status page's platform views (hub/integrations/web/platform.py, issue 8) over a
store filled by
the real platform code on LiteSVM (tests/helpers/platform.py's World: real SPL Token,
ATA and Memo programs): certificates minted from metered contracts, listed, bought and
retired; NRG granted, staked, proposals voted, decided and executed; an epoch's rewards
computed and paid. A real Hub with [web] then serves that store; the REST answers are
checked against the store read here with plain SQL, and a headless Chromium shows the
Platform section. A store where the platform never ran answers {"enabled": false}."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
from helpers.hub_site import Background
from helpers.platform import BASE, EPOCH, RULES, World, expected
from helpers.platform import fill as fill_incentives
from test_web_server import started

from hub.integrations.platform import schema
from hub.store import Store
from simulator import vm

pytestmark = pytest.mark.timeout(120)
CHROMIUM = "/usr/bin/chromium"
Y2024 = 1_704_067_200  # 2024-01-01 UTC: a second vintage


def build(folder):
    """The platform's tables in folder/hub.sqlite, filled through the platform's own code.
    -> what the test set up (ids, expected statuses)."""
    w = World(folder)
    p, r, g = w.platform, w.platform.rec, w.platform.gov
    try:
        p.incentives.rules.update(RULES)
        fill_incentives(w)  # telemetry, contracts, signals and a book for one epoch
        for i in range(4):
            w.contract(101, BASE + 3600 + 60 * i, 1.0, 1.0)  # solar: 1 certificate each
        w.contract(102, Y2024 + 600, 2.0, 2.0)  # wind, 2024: 2 certificates
        w.run(r.mint("m1"))
        w.run(p.credit.set_rate("rate-1", 3500, "THB"))
        w.run(p.credit.purchase("buy-credits", "carol", 100_000))
        owner = str(w.keys.account("owner-101"))
        held = [c["serial"] for c in r.certificates() if c["owner"] == owner]
        w.run(r.list("l1", "owner-101", held[:3], 400_000, wallet=w.signer("owner-101")))
        w.run(r.buy("b1", "carol", held[:1], wallet=w.signer("carol")))
        w.run(r.retire("x1", "carol", held[:1], "scope 2 2023", wallet=w.signer("carol")))
        # governance: two stakers; p1 passes and is executed, p2 is rejected, p3 is open
        w.run(g.genesis())
        w.run(g.grant("g1", "alice", 500))
        w.run(g.grant("g2", "bob", 300))
        w.run(g.stake("s1", "alice", 400, 7200, wallet=w.signer("alice")))
        w.run(g.stake("s2", "bob", 300, 7200, wallet=w.signer("bob")))
        w.run(g.propose("p1", "alice", "p_con", 5.0, 600, 900, wallet=w.signer("alice")))
        w.run(g.propose("p2", "bob", "k", 2.5, 600, 900, wallet=w.signer("bob")))
        w.run(g.vote("v1", "alice", "p1", True, wallet=w.signer("alice")))
        w.run(g.vote("v2", "bob", "p1", False, wallet=w.signer("bob")))
        w.run(g.vote("v3", "alice", "p2", False, wallet=w.signer("alice")))
        w.run(g.vote("v4", "bob", "p2", True, wallet=w.signer("bob")))
        w.now += 600
        g.tick()
        w.now += 300
        g.tick()
        w.run(g.propose("p3", "bob", "p_balance", 18.0, 600, 900, wallet=w.signer("bob")))
        w.run(g.vote("v5", "bob", "p3", True, wallet=w.signer("bob")))
        out = w.run(p.incentives.pay(EPOCH))
        assert out["rewards"] == len(expected())
        return {"listed": held[1:3], "retired": held[0], "owner": owner,
                "statuses": {"p1": "executed", "p2": "rejected", "p3": "open"}}  # fmt: skip
    finally:
        w.close()


def sql(db, query, *params):
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query, params)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(web server, store path, what build() set up, folder) for a hub over a store with
    platform data; the hub trades nothing (its [web] only)."""
    folder = tmp_path_factory.mktemp("platform-web")
    made = build(folder)
    run = Background()
    found = None
    try:
        found = run(started(folder))
        yield found[1], folder / "hub.sqlite", made, folder
    finally:
        if found is not None:
            run(found[0].close())
        run.stop()


def until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)
    return found


def get(web, path, expect=200, **params):
    response = httpx.get(web.url.rstrip("/") + path, params=params, timeout=10)
    assert response.status_code == expect, (path, response.status_code, response.text)
    return response.json()


def test_summary_counts_what_the_store_holds(hub):
    web, db, made, _folder = hub
    s = get(web, "/api/platform")
    assert s["enabled"] is True and s["schema_version"] == len(schema.MIGRATIONS)
    rows = sql(db, "SELECT s.status, c.vintage, count(*) AS n FROM rec_certificates c "
               "JOIN rec_state s USING (serial) GROUP BY s.status, c.vintage")  # fmt: skip
    assert s["certificates"]["total"] == sum(r["n"] for r in rows) >= 7
    for status in ("held", "listed", "retired"):
        assert s["certificates"]["by_status"][status] == sum(
            r["n"] for r in rows if r["status"] == status)  # fmt: skip
    assert s["certificates"]["by_status"]["listed"] == 2
    assert s["certificates"]["by_status"]["retired"] == 1
    assert set(s["certificates"]["by_vintage"]) == {"2023", "2024"}
    assert s["certificates"]["by_vintage"]["2024"] == {"held": 2, "listed": 0, "retired": 0}
    for r in rows:
        assert s["certificates"]["by_vintage"][str(r["vintage"])][r["status"]] == r["n"]
    assert s["credit"]["rate"]["fiat_per_credit"] == 3500
    assert s["credit"]["rate"]["currency"] == "THB"
    supply = sql(db, "SELECT sum(units) AS n FROM credit_moves")[0]["n"]
    assert s["credit"]["supply_units"] == supply == 100_000 * 10**6 // 3500
    assert s["nrg"]["supply"] == 1_000_000 and s["nrg"]["staked"] == 700
    assert s["proposals"] == {"open": 1, "total": 3, "by_status": {
        "open": 1, "passed": 0, "rejected": 1, "executed": 1}}  # fmt: skip
    last = s["rewards"]["last_epoch"]
    assert last["epoch"] == EPOCH and last["rewards"] == len(expected()) == last["paid"]
    assert last["nrg"] == sum(expected().values()) and s["rewards"]["epochs"] == 1
    assert s["pending_commands"] == 0


def test_certificates_page_and_filter(hub):
    web, db, made, _folder = hub
    everything = get(web, "/api/platform/certificates", limit=500)
    stored = sql(db, "SELECT c.serial, c.vintage, c.device, c.source, s.owner, s.status, "
                 "s.price FROM rec_certificates c JOIN rec_state s USING (serial) "
                 "ORDER BY serial DESC")  # fmt: skip
    keys = ("serial", "vintage", "device", "source", "owner", "status", "price")
    assert [{k: c[k] for k in keys} for c in everything["items"]] == stored
    assert everything["total"] == len(stored) and everything["enabled"] is True
    pages = [get(web, "/api/platform/certificates", limit=2, offset=k) for k in range(0, 20, 2)]
    assert all(p["total"] == len(stored) for p in pages)
    assert [c["serial"] for p in pages for c in p["items"]] == [r["serial"] for r in stored]
    listed = get(web, "/api/platform/certificates", status="listed")["items"]
    assert sorted(c["serial"] for c in listed) == sorted(made["listed"])
    assert {c["price"] for c in listed} == {400_000}
    assert {c["owner"] for c in listed} == {made["owner"]}  # the seller's until bought
    (retired,) = get(web, "/api/platform/certificates", status="retired")["items"]
    assert retired["serial"] == made["retired"] and retired["owner"] != made["owner"]
    v2024 = get(web, "/api/platform/certificates", vintage=2024)
    assert v2024["total"] == 2 and {c["device"] for c in v2024["items"]} == {102}
    assert get(web, "/api/platform/certificates", vintage=2024, status="retired")["total"] == 0


def test_proposals_show_status_and_tallies(hub):
    web, db, made, _folder = hub
    items = get(web, "/api/platform/proposals")["items"]
    assert {p["id"]: p["status"] for p in items} == made["statuses"]
    assert [p["id"] for p in items][0] == "p3"  # newest first
    shown = {p["id"]: p for p in items}
    for pid in made["statuses"]:
        votes = sql(db, "SELECT yes, weight FROM gov_votes WHERE proposal = ?", pid)
        tally = shown[pid]["tally"]
        assert tally["yes"] == sum(v["weight"] for v in votes if v["yes"])
        assert tally["no"] == sum(v["weight"] for v in votes if not v["yes"])
        assert tally["votes"] == len(votes)
    assert shown["p1"]["tally"] == {"yes": 400, "no": 300, "votes": 2}
    assert (shown["p1"]["yes"], shown["p1"]["no"]) == (400, 300)  # as decided
    assert shown["p2"]["tally"] == {"yes": 300, "no": 400, "votes": 2}
    assert shown["p3"]["tally"] == {"yes": 300, "no": 0, "votes": 1} and shown["p3"]["yes"] is None
    assert shown["p1"]["title"] == "p_con = 5.0" and shown["p1"]["value"] == 5.0
    (only,) = get(web, "/api/platform/proposals", status="rejected")["items"]
    assert only["id"] == "p2" and only["title"] == "k = 2.5"
    assert get(web, "/api/platform/proposals", status="passed") | {"items": []} == {
        "items": [], "limit": 100, "offset": 0, "total": 0, "enabled": True}  # fmt: skip
    second = get(web, "/api/platform/proposals", limit=1, offset=1)
    assert second["total"] == 3 and [p["id"] for p in second["items"]] == [items[1]["id"]]


def test_rewards_per_epoch_and_per_account(hub):
    web, db, _made, _folder = hub
    epochs = get(web, "/api/platform/rewards")
    assert epochs["total"] == 1 and epochs["rewards"] == []
    (e,) = epochs["items"]
    by_rule = {}
    for (_account, rule), n in expected().items():
        by_rule[rule] = by_rule.get(rule, 0) + n
    assert e["epoch"] == EPOCH and e["by_rule"] == by_rule
    assert e["nrg"] == e["paid_nrg"] == sum(expected().values())
    one = get(web, "/api/platform/rewards", epoch=EPOCH)
    stored = sql(db, "SELECT epoch, account, rule, basis_kwh, amount, paid_by "
                 "FROM incentive_rewards ORDER BY account, rule")  # fmt: skip
    assert one["rewards"] == stored and all(r["paid_by"] for r in stored)
    # incentive accounts are names ("owner-101") resolved at payment time
    assert {(r["account"], r["rule"]): r["amount"] for r in one["rewards"]} == expected()
    none = get(web, "/api/platform/rewards", epoch=EPOCH + 3600)
    assert none["items"] == [] and none["rewards"] == [] and none["total"] == 0


@pytest.mark.parametrize("path, params, named", [
    ("/api/platform/certificates", {"status": "burned"}, "status"),
    ("/api/platform/certificates", {"vintage": "last"}, "vintage"),
    ("/api/platform/certificates", {"vintage": 12}, "vintage"),
    ("/api/platform/certificates", {"limit": 501}, "limit"),
    ("/api/platform/certificates", {"limit": 0}, "limit"),
    ("/api/platform/certificates", {"offset": -1}, "offset"),
    ("/api/platform/proposals", {"status": "maybe"}, "status"),
    ("/api/platform/proposals", {"limit": 10**6}, "limit"),
    ("/api/platform/rewards", {"epoch": -5}, "epoch"),
    ("/api/platform/rewards", {"epoch": "x"}, "epoch"),
])  # fmt: skip
def test_bad_parameters_are_422_naming_them(hub, path, params, named):
    body = get(hub[0], path, expect=422, **params)
    assert body["error"].startswith(named + ":"), body


def test_no_wallet_secret_in_any_answer(hub):
    web, _db, _made, folder = hub
    from solders.keypair import Keypair

    # The platform's own keys, and the participants' (on their own machines; here a
    # folder beside): the address book and owners.json hold public keys only.
    files = [*(folder / "wallets").rglob("*.json"), *(folder / "participants").glob("*.json")]
    wallets = [p for p in files if isinstance(json.loads(p.read_text()), list)]
    assert len(wallets) >= 6  # authority, escrow, carol, alice, bob...
    secrets = []
    for path in wallets:
        raw = path.read_text()
        key = bytes(json.loads(raw))
        secrets += [str(Keypair.from_bytes(key)), key.hex(), key[:32].hex(), raw.strip()]
    keys = json.loads((folder / "hub-keys.json").read_text())
    secrets += [keys["group"], keys["master"]]
    paths = ["/api/platform", "/api/platform/certificates?limit=500",
             "/api/platform/proposals?limit=500", "/api/platform/rewards?limit=500",
             "/api/platform/rewards?epoch=%d" % EPOCH, "/api/platform/certificates?status=x",
             "/openapi.json", "/", "/static/app.js"]  # fmt: skip
    text = "\n".join(httpx.get(web.url.rstrip("/") + p).text for p in paths)
    assert "p_con" in text and "owner-101" in text  # the answers are not empty
    for secret in secrets:
        assert secret.lower() not in text.lower(), "a wallet secret reached the page"


def test_the_web_never_imports_the_chain():
    """The page reads the platform's tables (its views) and nothing else of it."""
    code = ("import sys, hub.integrations.web.api, hub.integrations.web.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'solders' "
            "or m.startswith('hub.integrations.platform.')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=vm.ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    assert out.strip() == str(["hub.integrations.platform.settings",
                               "hub.integrations.platform.views"]), out  # fmt: skip


def test_a_store_without_the_platform_says_disabled(tmp_path):
    run = Background()
    try:
        hub, web = run(started(tmp_path))
        try:
            assert get(web, "/api/platform") == {"enabled": False}
            for path in ("certificates", "proposals", "rewards"):
                body = get(web, "/api/platform/" + path)
                assert body["enabled"] is False and body["items"] == [] and body["total"] == 0
            # version 1 only (credit and certificates, no governance yet): what exists shows
            store = Store(tmp_path / "hub.sqlite")
            schema.migrate(store.db, target=1)
            store.close()
            shown = lambda: (body := get(web, "/api/platform"))["enabled"] and body  # noqa: E731
            s = until(shown, 10, "the platform tables to show")  # answers are kept 2 s
            assert s["schema_version"] == 1
            assert s["certificates"]["total"] == 0 and "proposals" not in s
            assert s["credit"] == {"rate": None, "supply_units": 0, "accounts": 0}
            assert get(web, "/api/platform/certificates")["enabled"] is True
            assert get(web, "/api/platform/proposals")["enabled"] is False
        finally:
            run(hub.close())
    finally:
        run.stop()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no system chromium (apt-get install)")
def test_the_page_shows_the_platform_on_a_phone(hub, tmp_path):
    from playwright.sync_api import sync_playwright

    web, db, made, _folder = hub
    total = sql(db, "SELECT count(*) AS n FROM rec_certificates")[0]["n"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            requests, errors = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(web.url)
            page.wait_for_selector("#platform", state="visible", timeout=10_000)
            page.wait_for_function("() => document.querySelectorAll("
                                   "'#platform-proposals tbody tr').length === 3")  # fmt: skip
            assert page.text_content("#platform-cert-count") == str(total)
            assert page.text_content("#platform-open") == "1"
            rows = page.evaluate("""() => [...document.querySelectorAll(
                '#platform-proposals tbody tr')].map(r => ({id: r.dataset.proposal,
                title: r.children[0].textContent, status: r.children[1].textContent,
                yes: r.children[2].textContent, no: r.children[3].textContent}))""")
            shown = {r["id"]: r for r in rows}
            assert {k: r["status"] for k, r in shown.items()} == made["statuses"]
            assert shown["p1"] == {"id": "p1", "title": "p_con = 5.0", "status": "executed",
                                   "yes": "400", "no": "300"}  # fmt: skip
            certs = page.locator("#platform-certificates tbody tr")
            assert certs.count() == min(total, 25)
            assert page.locator('#platform-certificates tr[data-status="retired"]').count() == 1
            assert page.locator("#platform-rewards tbody tr").count() == 1
            assert page.is_visible("#platform-link")
            # filter the certificates to the listed ones, as a user would
            page.select_option("#platform-cert-state", "listed")
            page.click("#platform-cert-filter button[type=submit]")
            page.wait_for_function("() => document.getElementById('platform-cert-total')"
                                   ".textContent === '2'")  # fmt: skip
            assert certs.count() == 2
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            page.screenshot(path=str(tmp_path / "platform.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    ours = (web.url, web.url.replace("http://", "ws://") + "ws", "data:")
    assert requests and all(r.startswith(ours) for r in requests), requests  # no CDN
