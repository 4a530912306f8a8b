"""The board's clock, from NTP, before the battery trades.

An ESP32 or Pico W reads 2000-01-01 after a power cut, and ETP refuses frames
more than 2 s off (protocol/frame.py), so app.py waits in start() before it
builds anything that reads the clock (the contract book, the replay guard, the
message ids): until then the battery neither listens nor announces itself, its
inverter idle (app.py), and
says so in one line per try, backing off 1 s -> 60 s. start() does that; run()
asks again, every ntp_resync_s (app.py's board_clock task). The client is MicroPython's
ntptime's (a 48-byte UDP packet, SNTP, RFC 4330) made asynchronous, so the
watchdog and Wi-Fi go on while it waits, with the checks ntptime skips. Only
start-up and each resync import this module: app.py drops it after each.

Trust: who may move a battery's clock, and by how much.
- Only the NTP servers config.json names (ntp_servers), and only with an answer
  that passes: it comes from the address asked (a connected socket), echoes the
  random transmit time of our request (RFC 5905's origin check: an off-path
  sender cannot guess it), says mode 4 (server), a stratum 1-15 and not
  "unsynchronised" (leap indicator 3), and is not before 2026-01-01 (_FLOOR_S).
- Once per boot, the first such answer sets the clock, by any amount: the
  clock is unknown, so no bound can be checked. Every later answer may move it
  by at most ntp_max_step_ms (default 1000, at most 2000: ETP's skew); a
  farther one is refused with one line and the clock stays. An RTC drifts well
  under 1 s an hour, so an honest server stays within the bound.
- Nothing else moves it: not an ETP frame (the CoAP client keeps its own
  offset to the hub's clock and does not touch the board's).

NTP carries no authentication, so a machine on the LAN that sees our request
can answer in the server's name. What it can do: at boot, set the clock to any
time after 2026-01-01; later, walk it by up to ntp_max_step_ms per resync. What
follows from a wrong clock:
- ETP peers check every frame against their own clocks (+-2 s), so a battery
  whose clock is off only sees its frames refused and refuses theirs: a denial
  of service, which a machine on the LAN can cause anyway by dropping packets.
  A contract needs the aggregator's BID_CONFIRM of the battery's BID_ACCEPT,
  sent at the battery's (wrong) time: the aggregator refuses it, so no contract
  is ever made at a wrong time that a peer holds.
- Replays stay refused while the node runs (the replay windows count message
  ids, not time). After a reboot with a clock set back, a frame sent in the
  last ~30 s before the cut (after the last saved replay marks, app.py
  keep_marks) can be replayed within its ttl; the battery's answer, dated by
  the wrong clock, is refused by its (honest) peer, so nothing binding follows.
- Contracts already in the book run by this clock: set at boot to a wrong
  time, a contract may start or end at the wrong time, or be closed as
  ended-while-off (CompletedUnknownOutcome). Its energy is still metered and
  the outcome reported as it happened, so the owner may lose that contract's pay.
  A board that must not trust its LAN's NTP should name a server it reaches
  through a path the attacker is not on; authenticated time (NTS, or the hub's
  clock answered to our nonce over ETP) is not built yet.
"""

import asyncio
import os
import socket
import sys
import time

from protocol.compat import const, ticks_diff, ticks_ms

# Every name a module holds stays interned on a board (app.py): this module uses few new
# ones (const() and shared names). 2208988800 s: from 1900-01-01 (NTP's epoch) to 1970.
_FLOOR_S = const(1767225600)  # 2026-01-01: no answer is before this firmware was written
_RETRY_MAX_S = const(60)


async def read(board, cfg):
    """Ask ntp_servers in turn -> (server, how far the board's clock is off, in ms) from
    the first that answers; OSError naming each server's failure when none does."""
    why = ""  # (texts of 11+ characters: shorter ones would be interned names)
    for host in cfg["ntp_servers"]:  # "host" or "host:port" (config.py checked them)
        sock = None
        try:
            name, _, port = host.rpartition(":")
            address = socket.getaddrinfo(name or host, int(port) if name else 123)[0][-1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(address)  # the kernel then drops datagrams from any other address
            sock.setblocking(False)
            data = bytearray(48)
            data[0] = 0x23  # leap 0, version 4, mode 3 (client)
            nonce = os.urandom(8)
            data[40:48] = nonce  # our transmit time: a true answer echoes it as its origin
            sent = ticks_ms()
            sock.send(data)
            while data[24:32] != nonce:  # not ours (a late answer to an older request): wait on
                left = cfg["ntp_timeout_ms"] - ticks_diff(ticks_ms(), sent)
                data = await asyncio.wait_for(board.receive(sock), max(left, 0) / 1000)
                if len(data) < 48:
                    data = bytes(48)
            # The server's transmit time plus half the round trip: within that of the truth.
            now = board.now_ms() - ticks_diff(ticks_ms(), sent) // 2
            mode, leap, stratum = data[0] & 7, data[0] >> 6, data[1]
            if mode != 4 or leap == 3 or not 1 <= stratum <= 15:
                raise ValueError("not a synchronised server (mode %d, leap %d, stratum %d)"
                                 % (mode, leap, stratum))  # fmt: skip
            seconds = int.from_bytes(data[40:44], "big")
            if seconds < 0x80000000:  # NTP's era 1 starts in 2036
                seconds += 0x100000000
            seconds -= 2208988800
            if seconds < _FLOOR_S:
                raise ValueError("it says %d s, before 2026-01-01" % seconds)
            return host, seconds * 1000 + (int.from_bytes(data[44:48], "big") * 1000 >> 32) - now
        except asyncio.TimeoutError:
            why = "%s [%s: no answer in %d ms]" % (why, host, cfg["ntp_timeout_ms"])
        except (OSError, ValueError) as exc:
            why = "%s [%s: %s]" % (why, host, exc)
        finally:
            if sock is not None:
                sock.close()
    raise OSError(why.strip())


async def update(board, off):
    """Move the board's clock by off ms, on a whole second: an RTC keeps no milliseconds."""
    await asyncio.sleep((1000 - (board.now_ms() + off) % 1000) / 1000)
    try:
        from machine import RTC
    except ImportError:  # the unix port (acting as a board) and CPython: no RTC to set
        sys.modules["board"].OFFSET_MS += off  # board.py's offset from the port's clock
        return
    # (year, month, day, weekday, hours, minutes, seconds, subseconds), as ntptime sets it
    t = time.gmtime((board.now_ms() + off) // 1000 - (time.gmtime(0)[0] == 2000) * 946684800)
    RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))


async def start(board, cfg, log):
    """Wait for the first answer and set the clock by it, however far (see above)."""
    delay = 1
    while True:
        try:
            host, off = await read(board, cfg)
            break
        except OSError as exc:
            log("clock: not set (the board says %d s since 1970), not trading until NTP "
                "answers: %s; retrying in %d s" % (board.now_ms() // 1000, exc, delay))  # fmt: skip
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX_S)
    await update(board, off)
    log("clock: set from NTP %s (moved %d ms)" % (host, off))


async def run(board, cfg, log):
    """One resync: move the clock by at most ntp_max_step_ms. app.py calls it every
    ntp_resync_s and drops this module between calls (its ~1 KB is not kept in the heap)."""
    try:
        host, off = await read(board, cfg)
    except OSError as exc:
        log("clock: NTP resync failed, keeping the clock: %s" % exc)
        return
    if abs(off) > cfg["ntp_max_step_ms"]:
        log("clock: refused NTP %s: it says %+d ms, more than ntp_max_step_ms %d "
            "(a spoofed answer?)" % (host, off, cfg["ntp_max_step_ms"]))  # fmt: skip
        return
    await update(board, off)
