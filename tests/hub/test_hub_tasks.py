"""Tasks never die silently on the hub (issue 17: "no task dies silently"): a task that
fails is logged in one line and restarted (transport/tasks.py keep), or, when the hub
cannot run without it, the hub stops with one line and exit code 1, so that systemd
starts it again (tasks.watch -> Hub.fail).

Both failed before the fix (verified with the source stashed): the /price notification
task ended at its first error and no device heard from the hub again, and a page server
that died left `gridbid hub run` trading on with no page, exit code 0."""

import argparse
import asyncio

import pytest
from helpers.coap_hub import running_hub
from helpers.hub_site import write_keys

from gridbid import hub as hub_cli
from hub.integrations.web import server as web_server
from simulator.fleet import free_group_port, free_port

pytestmark = pytest.mark.timeout(60)


def test_a_failed_notification_task_is_logged_and_restarted(tmp_path):
    async def main():
        async with running_hub(tmp_path, max_age_s=1) as hub:  # a notification every 0.5 s
            sent = []

            def notify():
                sent.append(asyncio.get_running_loop().time())
                if len(sent) == 1:
                    raise RuntimeError("the observers' list changed")

            hub.coap.price.updated_state = notify
            for _ in range(80):
                if len(sent) >= 3:
                    break
                await asyncio.sleep(0.05)
            return sent, list(hub.logs)

    sent, logs = asyncio.run(main())
    assert len(sent) >= 3, "the task died at its first error"
    failed = [line for line in logs if "failed" in line]
    assert failed == [
        "task coap /price notifications failed: RuntimeError: the observers' list changed; "
        "restarting in 1.0 s"
    ], logs
    assert sent[1] - sent[0] >= 1.0  # after the backoff


def test_a_dead_page_server_stops_the_hub_with_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    write_keys(tmp_path / "hub-keys.json", [1])
    (tmp_path / "hub.toml").write_text(
        "[hub]\n"
        'store = "hub.sqlite"\n'
        'interface = "127.0.0.1"\n'
        "group_port = %d\n"
        "device_port = %d\n"
        "slot_s = 4\ngate_s = 2\nbind_timeout_s = 1.0\nanswer_s = 0.5\ndiscovery_s = 0.2\n"
        "[[aggregator]]\nkey_id = 1\n"
        '[web]\nhost = "127.0.0.1"\nport = 0\n' % (free_group_port(), free_port())
    )

    async def main_loop(self):  # uvicorn's loop, after it started serving
        await asyncio.sleep(0.3)
        raise RuntimeError("the page's server broke")

    monkeypatch.setattr(web_server._Server, "main_loop", main_loop)
    args = argparse.Namespace(action="run", config=str(tmp_path / "hub.toml"), slots=2)
    code = hub_cli.run(args)
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert err.splitlines() == [
        "error: hub stopped: task web server failed: RuntimeError: the page's server broke"
    ], err
    assert "Traceback" not in out + err
