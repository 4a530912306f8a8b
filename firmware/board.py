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
# Some ports count time from 2000-01-01; ETP frames carry unix time.
_EPOCH_MS = 946684800000 if time.gmtime(0)[0] == 2000 else 0


def load_profile(path):
    with open(path) as f:
        profile = json.load(f)
    for key in ("name", "network"):
        if key not in profile:
            raise ValueError("board profile %s has no %r" % (path, key))
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

    # --- clock and watchdog ---------------------------------------------------

    def now_ms(self):
        return time.time_ns() // 1000000 + _EPOCH_MS

    def start_watchdog(self):
        timeout = self.profile.get("watchdog_ms")
        if timeout:
            from machine import WDT  # boards only

            self._wdt = WDT(timeout=timeout)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    # --- network ------------------------------------------------------------

    async def keep_connected(self, wifi, wlan=None):
        """Join Wi-Fi and rejoin whenever the link drops, backing off 1 s -> 60 s."""
        if self.profile["network"] != "wifi":
            return
        if wlan is None:
            import network  # boards only

            wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        delay = 1
        while True:
            if not wlan.isconnected():
                self.log("wifi: connecting to %s" % wifi["ssid"])
                wlan.connect(wifi["ssid"], wifi["password"])
                for _ in range(100):
                    if wlan.isconnected():
                        break
                    await asyncio.sleep(0.1)
                if not wlan.isconnected():
                    self.log("wifi: no link, retrying in %d s" % delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60)
                    continue
                delay = 1
                self.log("wifi: connected as %s" % wlan.ifconfig()[0])
            await asyncio.sleep(2)

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

    def group_sender(self, bind_ip):
        """A UDP socket for sending to the group, from this device's own address."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(socket.getaddrinfo(bind_ip, 0)[0][-1])
        interface = self.profile.get("multicast_interface")
        option = getattr(socket, "IP_MULTICAST_IF", self.profile.get("ip_multicast_if"))
        if interface and option:
            sock.setsockopt(0, option, _ip_bytes(interface))
        return sock

    async def receive(self, sock, size=512):
        """Wait for one datagram, and return exactly one."""
        if not MICROPYTHON:
            return await asyncio.get_running_loop().sock_recv(sock, size)
        # MicroPython's stream read(n) calls recv until it has n bytes, which on a
        # UDP socket glues datagrams together: use the stream only to wait.
        reader = asyncio.StreamReader(sock)
        while True:
            await reader.read(0)
            try:
                return sock.recv(size)
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
