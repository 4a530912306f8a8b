"""Issue 17, row 3: a battery (or anything on its port) that accepts the hub's connection
and closes it at once made the hub reconnect with no delay, 2,500-3,900 times a second
at 60 % CPU. Now a session shorter than links.STABLE_S backs off as a refused connect
does, with jitter."""

import asyncio
import os

import pytest

from protocol import auth, frame
from simulator.fleet import free_port
from transport import links

pytestmark = pytest.mark.timeout(60)


def test_accept_then_close_is_retried_with_backoff_not_in_a_loop():
    async def scenario():
        accepted = []

        async def slam(reader, writer):  # accept, then hang up at once
            accepted.append(asyncio.get_running_loop().time())
            writer.close()

        port = free_port()
        server = await asyncio.start_server(slam, "127.0.0.1", port)
        codec = frame.Codec(auth.Keyring({2: os.urandom(32)}, group=os.urandom(32)), key_id=1,
                            peer=2)  # fmt: skip
        link = links.DeviceLink(codec, "127.0.0.1", port, lambda *_: None).start()
        await asyncio.sleep(3.0)
        await link.close()
        server.close()
        return accepted

    accepted = asyncio.run(scenario())
    # 0.5, 1, 2 s (x 1-1.5 jitter) between tries: at most 4 in 3 s, not thousands
    assert 2 <= len(accepted) <= 4, len(accepted)
    gaps = [b - a for a, b in zip(accepted, accepted[1:])]
    assert all(gap >= 0.45 for gap in gaps), gaps
