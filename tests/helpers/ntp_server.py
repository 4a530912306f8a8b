"""A tiny SNTP server on loopback for firmware clock tests (firmware/board_clock.py).

It answers the 48-byte request as an NTP server does (mode 4, stratum 2, our
origin echoed), with the host's clock plus offset_ms, which a test changes to
play a spoofer. Port 123 needs root (this machine and CI run as root); it binds a
loopback address of its own so it never meets the host's NTP daemon.
"""

import asyncio
import json
import struct
import time

from simulator import vm
from simulator.fleet import UNIX_BOARD

ADDRESS = "127.0.0.123"  # the server's own loopback address

NTP_DELTA_S = 2208988800  # 1900-01-01 -> 1970-01-01


def timestamp(unix_s):
    """Unix seconds (float) -> the 8-byte NTP timestamp."""
    ntp = unix_s + NTP_DELTA_S
    return struct.pack(">II", int(ntp) & 0xFFFFFFFF, int((ntp % 1) * 2**32))


class NtpServer(asyncio.DatagramProtocol):
    def __init__(self, offset_ms=0):
        self.offset_ms = offset_ms  # what this server adds to the truth
        self.mangle = None  # reply bytes -> what is sent instead (a broken or forged server)
        self.requests = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.requests += 1
        if len(data) < 48:
            return
        now = time.time() + self.offset_ms / 1000
        reply = bytes([0x24, 2, 6, 0xEC]) + bytes(8) + b"TEST"  # leap 0, v4, mode 4, stratum 2
        reply += timestamp(now) + data[40:48] + timestamp(now) + timestamp(now)
        if self.mangle is not None:
            reply = self.mangle(reply)
        self.transport.sendto(reply, addr)


async def start(host=ADDRESS, port=123, offset_ms=0):
    """-> the running NtpServer (close it with server.transport.close())."""
    loop = asyncio.get_running_loop()
    _transport, server = await loop.create_datagram_endpoint(
        lambda: NtpServer(offset_ms), local_addr=(host, port)
    )
    return server


def unset_board(folder):
    """The unix board profile with the clock of a board after a power cut: it starts at
    2000-01-01 and NTP must set it (hardware/boards/unix.json's clock settings) -> path."""
    profile = json.loads(UNIX_BOARD.read_text())
    profile.update(host_keeps_time=False, clock_at_boot_s=946684800,
                   registers_dir=str(vm.ROOT / "hardware" / "registers"))  # fmt: skip
    path = folder / "board-unset.json"
    path.write_text(json.dumps(profile))
    return path
