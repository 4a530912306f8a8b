"""The status page in a real browser while `gridbid demo --web-port P` runs: headless
Chromium (the system's, driven by playwright; never `playwright install`) on a
phone-sized screen watches the auctions go by, then the demo is stopped with Ctrl-C
with the page still connected. The screenshot is kept in the test's tmp_path."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from simulator import vm
from simulator.fleet import free_port

pytestmark = pytest.mark.timeout(120)
CHROMIUM = "/usr/bin/chromium"


class Demo:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridbid.cli", "demo", *args], cwd=vm.ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.proc.poll() is None, "the demo ended:\n" + "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError("no %r in %d s:\n%s" % (pattern, timeout, "".join(self.lines)))


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no system chromium (apt-get install)")
def test_the_page_follows_the_demo_live_on_a_phone(tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    demo = Demo("--devices", "2", "--aggregators", "3", "--slots", "1000", "--slot-s", "4",
                "--seed", "11", "--web-port", str(port))  # fmt: skip
    try:
        url = demo.wait_for(r"status page: (http://127\.0\.0\.1:%d/)" % port, 40).group(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            requests, errors = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(url)
            page.wait_for_function("() => document.getElementById('conn').textContent === 'live'")
            before = page.evaluate("""() => ({
                slots: [...document.querySelectorAll('#slots tbody tr')].map(r => r.dataset.slot),
                live: document.getElementById('live-slot').textContent,
                last: document.getElementById('last-slot').textContent,
            })""")
            # A slot that was not there at load appears, cleared at a price, without a reload;
            # the live auction moves on to a new slot and its bid layers arrive.
            page.wait_for_function(
                """(known) => [...document.querySelectorAll('#slots tbody tr')].some(r =>
                    !known.includes(r.dataset.slot) && /^\\d/.test(r.children[6].textContent))""",
                arg=before["slots"], timeout=25_000,
            )  # fmt: skip
            page.wait_for_function(
                "(live) => document.getElementById('live-slot').textContent !== live "
                "&& document.querySelectorAll('#live-bids tbody tr').length > 0",
                arg=before["live"], timeout=15_000,
            )  # fmt: skip
            assert page.text_content("#last-slot") != before["last"]
            # The live market's gain by competition: a row per number of aggregators
            page.wait_for_function(
                "() => document.querySelectorAll('#competition-live tbody tr').length > 0",
                timeout=10_000)  # fmt: skip
            gain = page.text_content("#competition-live tbody tr td:last-child")
            assert re.match(r"^[+-]\d+\.\d %$", gain), gain
            assert re.match(r"^\d+\.\d\d c/kWh$", page.text_content("#last-price"))
            # Telemetry: each battery's "last seen" moves every second or so.
            seen = page.get_attribute("#device-table tbody tr", "data-seen")
            page.wait_for_function(
                "(seen) => Number(document.querySelector('#device-table tbody tr')"
                ".dataset.seen) > Number(seen)", arg=seen, timeout=5_000,
            )  # fmt: skip
            assert page.text_content("#soc-1001").endswith(" %")
            # A phone: the page is no wider than the screen (wide tables scroll inside).
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            shot = tmp_path / "status-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print("screenshot: %s" % shot)
            assert shot.stat().st_size > 10_000
            assert not errors, errors  # (once the hub is gone, its page's fetches fail)

            os.killpg(demo.proc.pid, signal.SIGINT)  # Ctrl-C, the page still connected
            code = demo.proc.wait(20)
            page.wait_for_function(
                "() => document.getElementById('conn').textContent.includes('reconnecting')"
            )
            browser.close()
        ours = ("http://127.0.0.1:%d/" % port, "ws://127.0.0.1:%d/ws" % port, "data:")
        assert requests and all(r.startswith(ours) for r in requests), requests  # no CDN
        out = "".join(demo.lines)
        assert code == 130, out
        assert "Traceback" not in out and "ERROR" not in out, out
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if demo.proc.poll() is None:  # failed midway: stop it as a user would (its batteries too)
            os.killpg(demo.proc.pid, signal.SIGINT)
            try:
                demo.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(demo.proc.pid, signal.SIGKILL)
                demo.proc.wait()


def test_a_busy_web_port_leaves_the_demo_without_its_page():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = Demo("--devices", "1", "--aggregators", "2", "--slots", "1", "--slot-s", "4",
                    "--web-port", str(port))  # fmt: skip
        code = demo.proc.wait(60)
    out = "".join(demo.lines)
    assert code == 0 and "Traceback" not in out, out
    assert "no status page (web: cannot listen on 127.0.0.1:%d: " % port in out, out
    assert "status page: http" not in out and re.search(r"slot \S+: 1 offers", out), out
