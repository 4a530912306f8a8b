"""Thin adapters between the app and the board it runs on: clock, watchdog,
network, multicast sockets, serial ports. Everything board-specific comes from
the board's profile (hardware/boards/*.json); the app never asks which board.

The unix port and CPython are boards too: no watchdog, no Wi-Fi, loopback
multicast through 127.0.0.1.
"""

import asyncio
import json
import socket
import sys
import time

MICROPYTHON = sys.implementation.name == "micropython"
# The port's clock plus OFFSET_MS is unix time in ms (ETP frames carry unix time): some
# ports count from 2000-01-01; and a board without an RTC (the unix port acting as a board)
# keeps its clock here: board_clock.py moves it (one clock per machine: one per process).
OFFSET_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


def load_profile(path):
    with open(path) as f:
        profile = json.load(f)
    for key in ("name", "network"):
        if key not in profile:
            raise ValueError("board profile %s has no %r" % (path, key))
    # Who keeps time (see Board.now_ms): two settings no typo may turn into another clock.
    if not isinstance(profile.get("host_keeps_time", False), bool):
        raise ValueError("board profile %s: host_keeps_time is true or false" % path)
    boot = profile.get("clock_at_boot_s", 0)
    if isinstance(boot, bool) or not isinstance(boot, int) or not 0 <= boot < 2**32:
        raise ValueError("board profile %s: clock_at_boot_s is unix seconds" % path)
    profile.pop("description", None)  # for people; the board keeps the profile for good
    # Its paths are relative to its own folder, as the register maps travel with it.
    registers, folder = profile.get("registers_dir"), path.rpartition("/")[0]
    if registers and folder and not registers.startswith("/"):
        profile["registers_dir"] = folder + "/" + registers
    return profile


class Board:
    def __init__(self, profile, log=print):
        self.profile = profile
        self.name = profile["name"]
        self.log = log
        self._wdt = None
        if profile.get("clock_at_boot_s"):
            global OFFSET_MS
            OFFSET_MS += profile["clock_at_boot_s"] * 1000 - self.now_ms()

    # --- clock and watchdog ---------------------------------------------------
    # Who keeps time (the profile says; board_clock.py sets the clock before trading):
    #   a board's RTC (by default): it reads 2000-01-01 after a power cut;
    #   "host_keeps_time": true: the unix port or CPython on a host that keeps time (the
    #       demo, most tests): nothing sets it;
    #   "clock_at_boot_s": 946684800 (2000-01-01): the unix port acting as a board; its
    #       clock starts there, and board_clock.py sets OFFSET_MS (the unix port has no RTC).

    def now_ms(self):
        """Unix time in ms, by this board's clock."""
        return time.time_ns() // 1000000 + OFFSET_MS

    def start_watchdog(self):
        timeout = self.profile.get("watchdog_ms")
        if timeout:
            from machine import WDT  # boards only

            self._wdt = WDT(timeout=timeout)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    # --- network ------------------------------------------------------------

    async def keep_connected(self, cfg, wlan=None):
        """On a Wi-Fi board, join the network cfg names ({"ssid", "password"}) and
        rejoin whenever the link drops (wifi.py; wlan: the radio, for tests)."""
        if self.profile["network"] == "wifi":
            import wifi  # only a Wi-Fi board loads it (and interns its names)

            await wifi.keep_connected(cfg, self.log, wlan)

    def group_receiver(self, group_addr, port):
        """A UDP socket joined to the ETP multicast group, non-blocking."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(socket.getaddrinfo("0.0.0.0", port)[0][-1])
        interface = self.profile.get("multicast_interface", "0.0.0.0")
        mreq = _ip_bytes(group_addr) + _ip_bytes(interface)
        sock.setsockopt(0, socket.IP_ADD_MEMBERSHIP, mreq)  # 0: IPPROTO_IP (absent on MP)
        sock.setblocking(False)
        return sock

    def group_sender(self, address):
        """A UDP socket for sending to the group, from this device's own address."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(socket.getaddrinfo(address, 0)[0][-1])
        interface = self.profile.get("multicast_interface")
        option = getattr(socket, "IP_MULTICAST_IF", self.profile.get("ip_multicast_if"))
        if interface and option:
            sock.setsockopt(0, option, _ip_bytes(interface))
        return sock

    async def receive(self, sock):
        """Wait for one datagram (of up to 512 bytes: a frame is 124), and return exactly one."""
        if not MICROPYTHON:
            return await asyncio.get_running_loop().sock_recv(sock, 512)
        # MicroPython's stream read(n) calls recv until it has n bytes, which on a
        # UDP socket glues datagrams together: use the stream only to wait.
        reader = asyncio.StreamReader(sock)
        while True:
            await reader.read(0)
            try:
                return sock.recv(512)
            except OSError:  # woken for nothing (EAGAIN): wait again
                continue

    # --- serial -------------------------------------------------------------

    def serial_port(self, link):
        """The UART for a Modbus RTU link ({"uart": 1} on a board, {"path": ...} on unix)."""
        import serial_port

        uart = self.profile.get("uarts", {}).get(str(link.get("uart")), {})
        return serial_port.open_port(link, uart)


def _ip_bytes(address):
    return bytes(int(part) for part in address.split("."))
