"""hub/integrations/web's own life, on a real Hub (real store, real events) that trades nothing:
its settings and token file, the read-only page, the experiment plot, slow WebSocket
clients, a busy port, and a clean close. The page with a trading hub: test_web.py."""

import asyncio
import json
import os
import socket
import sqlite3
import time

import httpx
import pytest
import websockets
from helpers.hub_site import write_keys

from hub.config import hub_toml
from hub.service import Hub, StartError
from hub.store import Store
from hub.store import views as queries

pytestmark = pytest.mark.timeout(60)
TOKEN = "t0ken-for-tests-only-0123456789"


def config(folder, **web):
    write_keys(folder / "hub-keys.json", [1, 2])
    return hub_toml.check({
        "hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json", "slot_s": 10, "gate_s": 4},
        "aggregator": [{"key_id": 1, "name": "a"}, {"key_id": 2, "name": "b"}],
        "web": {"port": 0, **web},
    }, base=folder)  # fmt: skip


async def started(folder, **web):
    hub = Hub(config(folder, **web))
    await hub.start_integrations()
    return hub, hub.integrations["web"]


def token_file(folder, text=TOKEN, mode=0o600):
    path = folder / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return "token"


@pytest.mark.parametrize("case, says", [
    ("token readable by group", "is readable by others: chmod 600 it"),
    ("token readable by all", "is readable by others: chmod 600 it"),
    ("no token file", "no token_file"),
    ("short token", "must hold one token of 16+ characters"),
    ("port too big", "port must be a whole number 0..65535"),
    ("port a string", "port must be a whole number 0..65535"),
    ("queue of 0", "ws_queue must be a whole number"),
    ("plot not an image", "experiment_plot must name a .png or .svg file"),
    ("results not json", "experiment_json must name a .json file"),
    ("unknown setting", "[web] has unknown settings ['colour']"),
    ("empty host", "host must be a host name or an IP address"),
])  # fmt: skip
def test_bad_web_settings_stop_the_hub_with_one_line(tmp_path, case, says):
    web = {
        "token readable by group": lambda: {"token_file": token_file(tmp_path, mode=0o640)},
        "token readable by all": lambda: {"token_file": token_file(tmp_path, mode=0o604)},
        "no token file": lambda: {"token_file": "missing"},
        "short token": lambda: {"token_file": token_file(tmp_path, text="abc")},
        "port too big": lambda: {"port": 70000},
        "port a string": lambda: {"port": "8080"},
        "queue of 0": lambda: {"ws_queue": 0},
        "plot not an image": lambda: {"experiment_plot": "plot.pdf"},
        "results not json": lambda: {"experiment_json": "results.csv"},
        "unknown setting": lambda: {"colour": "blue"},
        "empty host": lambda: {"host": ""},
    }[case]()
    with pytest.raises(hub_toml.ConfigError) as error:
        config(tmp_path, **web)
    message = str(error.value)
    assert "[web]" in message and says in message and "\n" not in message
    assert TOKEN not in message


def test_without_a_token_file_the_page_is_read_only(tmp_path):
    async def main():
        hub, web = await started(tmp_path)
        try:
            async with httpx.AsyncClient(base_url=web.url) as client:
                status = (await client.get("/api/status")).json()
                refused = await client.post(
                    "/api/controls", json={"name": "paused.a", "value": True},
                    headers={"Authorization": "Bearer " + TOKEN},
                )  # fmt: skip
                page = await client.get("/")
        finally:
            await hub.close()
        return hub, status, refused, page

    hub, status, refused, page = asyncio.run(main())
    assert status["writable"] is False and status["hub"] == "hub"
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert hub.controls.values == {}
    assert '<meta name="viewport"' in page.text  # a phone gets the mobile layout
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_page_reads_the_store_through_a_read_only_connection(tmp_path):
    hub = Hub(config(tmp_path))
    try:
        hub.set_control("paused.a", True, by="test")
        reader = queries.ReadStore(hub.cfg["store"])
        assert reader.controls() == {"paused.a": True}  # it sees what the hub wrote
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.set_control("paused.a", False, by="page")
        reader.close()
    finally:
        asyncio.run(hub.close())
    with Store(tmp_path / "hub.sqlite") as store:
        assert store.controls() == {"paused.a": True}


def test_the_experiment_plot_is_served_once_it_exists(tmp_path):
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'

    async def main():
        hub, web = await started(tmp_path, experiment_plot="out/plot.svg")
        try:
            async with httpx.AsyncClient(base_url=web.url) as client:
                before = await client.get("/plot"), (await client.get("/api/status")).json()
                (tmp_path / "out").mkdir()
                (tmp_path / "out" / "plot.svg").write_text(svg)  # `experiment --plot` made it
                after = await client.get("/plot"), (await client.get("/api/status")).json()
        finally:
            await hub.close()
        return before, after

    (missing, status_before), (served, status_after) = asyncio.run(main())
    assert missing.status_code == 404 and "experiment --plot" in missing.json()["error"]
    assert status_before["plot"] is False and status_after["plot"] is True
    assert served.status_code == 200 and served.text == svg
    assert served.headers["content-type"].startswith("image/svg+xml")


def test_the_latest_experiment_is_served_once_it_exists(tmp_path):
    """`gridbid experiment --json` results, as the page shows them: 404 before the file
    exists, 422 for a file that is not such results, then its table."""
    from simulator import experiment

    results = experiment.run_experiment(aggregators=[1, 2], devices=5, slots=3, seed=2,
                                        repeats=2)  # fmt: skip
    path = tmp_path / "out" / "results.json"

    async def main():
        hub, web = await started(tmp_path, experiment_json="out/results.json")
        got = []
        try:
            async with httpx.AsyncClient(base_url=web.url) as client:
                got.append(await client.get("/api/experiment"))
                path.parent.mkdir()
                path.write_text("[1, 2]")
                got.append(await client.get("/api/experiment"))
                path.write_text(json.dumps(results))
                got.append(await client.get("/api/experiment"))
                got.append((await client.get("/api/status")).json())
        finally:
            await hub.close()
        return got

    missing, bad, served, status = asyncio.run(main())
    assert missing.status_code == 404 and "experiment --json" in missing.json()["error"]
    assert bad.status_code == 422 and "results.json" in bad.json()["error"]
    body = served.json()
    assert served.status_code == 200 and status["experiment"] is True
    assert body["parameters"]["repeats"] == 2 and set(body["baselines"]) >= {"informed"}
    for run, want in zip(body["runs"], results["runs"]):
        assert run["mean_price"] == pytest.approx(want["mean_price"])
        assert run["gain"]["informed"]["revenue_pct"] == pytest.approx(
            want["gain"]["informed"]["revenue_pct"])  # fmt: skip


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="no system chromium")
def test_the_page_shows_the_latest_experiment_in_a_browser(tmp_path):
    """The page's "Does competition pay?" section in Chromium: the experiment's rows
    (baselines, then each N with its gains), and no script error."""
    from playwright.sync_api import sync_playwright

    from simulator import experiment

    results = experiment.run_experiment(aggregators=[1, 3], devices=5, slots=3, seed=2,
                                        repeats=2)  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))

    def browse(url):  # sync Playwright, in a thread of its own while the hub's loop serves
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu"])  # fmt: skip
            page, errors = browser.new_page(), []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("#experiment:not([hidden])", timeout=10_000)
            rows = page.eval_on_selector_all(
                "#experiment-table tbody tr",
                "rows => rows.map(r => [...r.children].map(c => c.textContent))")  # fmt: skip
            about = page.text_content("#experiment-about")
            browser.close()
        return rows, about, errors

    async def main():
        hub, web = await started(tmp_path, experiment_json="results.json")
        try:
            return await asyncio.to_thread(browse, web.url)
        finally:
            await hub.close()

    rows, about, errors = asyncio.run(main())
    assert "hub market" in about and "2 repeats" in about
    assert [r[0] for r in rows] == ["informed monopsonist", "uninformed posted price",
                                    "feed-in tariff", "N = 1", "N = 3"]  # fmt: skip
    three = rows[-1]
    assert three[1].startswith("%.2f ± " % results["runs"][1]["mean_price"])
    assert three[4].endswith(" %") and three[4][0] in "+-"
    assert not errors, errors


async def stuck_client(host, port):
    """A WebSocket client that asks for /ws and then reads nothing, with a tiny buffer."""
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(stuck, (host, int(port)))
    await loop.sock_sendall(stuck, (
        "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % host).encode())  # fmt: skip
    return stuck


def test_a_slow_client_is_dropped_and_the_others_get_every_event(tmp_path):
    """One client reads nothing; the other reads all. Events of 20 kB: the reader's
    socket fills, its queue (8) overflows, and it is dropped; the hub's emit stays
    quick throughout, and the reading client misses nothing."""
    count, payload = 300, "x" * 20_000

    async def main():
        hub, web = await started(tmp_path, ws_queue=8)
        host, port = web.url[7:-1].split(":")
        try:
            stuck = await stuck_client(host, port)
            got = []
            async with websockets.connect("ws://%s:%s/ws" % (host, port), max_size=2**20) as ws:
                got.append(json.loads(await ws.recv()))  # hello
                while len(web.fanout.clients) < 2:
                    await asyncio.sleep(0.01)
                slowest = 0.0
                for n in range(count):
                    began = time.perf_counter()
                    hub.events.emit("control", name="bulk.%d" % n, value=payload, by="test")
                    slowest = max(slowest, time.perf_counter() - began)
                    got.append(json.loads(await ws.recv()))  # this client keeps up
                status = (await httpx.AsyncClient().get(web.url + "api/status")).json()
            stuck.close()
        finally:
            await hub.close()
        return got, status["ws"], slowest

    got, ws, slowest = asyncio.run(main())
    assert [e["name"] for e in got[1:]] == ["bulk.%d" % n for n in range(count)]
    assert ws["dropped"] == 1 and ws["clients"] == 1, ws
    assert slowest < 0.05, "an emit took %.3f s: the hub waited for a client" % slowest


def test_close_ends_every_client_and_frees_the_port_even_with_a_stuck_one(tmp_path):
    async def main():
        hub, web = await started(tmp_path, token_file=token_file(tmp_path))
        host, port = web.url[7:-1].split(":")
        ws = await websockets.connect("ws://%s:%s/ws" % (host, port))
        await ws.recv()
        stuck = await stuck_client(host, port)
        while len(web.fanout.clients) < 2:
            await asyncio.sleep(0.01)
        for n in range(200):  # fill its socket: its sender waits (ws_queue 256: not dropped)
            hub.events.emit("control", name="bulk.%d" % n, value="x" * 50_000, by="test")
            await ws.recv()
        assert len(web.fanout.clients) == 2
        began = time.monotonic()
        await hub.close()
        took = time.monotonic() - began
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
        stuck.close()
        return took, code, int(port)

    took, code, port = asyncio.run(main())
    assert code == 1001  # going away: the page reconnects later
    print("close with a stuck client took %.2f s" % took)
    assert took < 5, "close took %.1f s" % took
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        async def main():
            hub = Hub(config(tmp_path, port=port))
            try:
                await hub.start_integrations()
            finally:
                await hub.close()

        with pytest.raises(StartError) as error:
            asyncio.run(main())
    assert error.value.integration == "web"
    assert str(error.value).startswith("[web] cannot start: web: cannot listen on 127.0.0.1:%d: "
                                       % port)  # fmt: skip
    assert "in use" in str(error.value)


def test_aggregators_show_their_margin_when_the_hub_settles(tmp_path):
    """/api/aggregators with [settlement]: each aggregator's margin account in credits
    (hub/integrations/settlement/margin.py), here after aggregator 1 deposited 2 credits
    from its own wallet (the real LiteSVM chain and its faucet)."""
    import base64

    from aggregator.wallet import create

    data = {
        "hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json", "slot_s": 10, "gate_s": 4},
        "aggregator": [{"key_id": 1, "name": "a"}, {"key_id": 2, "name": "b"}],
        "web": {"port": 0}, "settlement": {"wallets": "wallets"},
    }  # fmt: skip
    write_keys(tmp_path / "hub-keys.json", [1, 2])

    async def main():
        hub = Hub(hub_toml.check(data, base=tmp_path))
        await hub.start_integrations()
        try:
            margin = hub.integrations["settlement"].margin
            await hub.integrations["settlement"].round()  # its start-up hold first
            wallet = create(tmp_path / "own-wallet.json")
            await margin.faucet(1, wallet.pubkey)
            tx = wallet.deposit(margin.terms(1), 2 * 10**6, await margin.blockhash())
            await margin.deposit(1, base64.b64encode(bytes(tx)).decode())
            async with httpx.AsyncClient() as client:
                answer = await client.get(hub.integrations["web"].url + "api/aggregators")
            return {row["name"]: row["margin"] for row in answer.json()["items"]}
        finally:
            await hub.close()

    shown = asyncio.run(main())
    assert shown["a"] == {"deposited": 2.0, "withdrawn": 0.0, "paid": 0.0, "owed": 0.0, "free": 2.0,
                          "paid_contracts": 0, "unpaid": 0.0}  # fmt: skip
    assert shown["b"]["deposited"] == 0.0 and shown["b"]["free"] == 0.0
