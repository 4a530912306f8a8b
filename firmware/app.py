"""The battery controller, wired from a board profile and config.json.

Start-up follows GridWorks' SCADA sequence: read the persisted contracts
(contracts.py: ended-while-off ones become CompletedUnknownOutcome and wait to
be reported), resume the ones still inside their window, and only then talk
to the devices and the network; the operating mode follows from the live
contracts.

A broken config.json is never a crash loop: the controller says what is wrong,
stays idle with the watchdog fed, and starts as soon as the file is fixed.

Heap: a board without PSRAM has ~100 KB. Start-up imports only what reading
config.json and the register maps needs, then drops the modules only start-up
uses (config, register_map, sunspec: their code is collected), and only then
imports the trading side; so the two never sit in the heap together, and parsing the
maps' JSON does not land on top of the whole app. board_clock (NTP) is imported for
the first sync and for each resync, and dropped after each. Every distinct name the
modules use is interned in the heap for good (a dropped module's too): past 620
of them MicroPython adds a 7 KB table, so the firmware keeps below that (no
module-level names for private constants: const(); shared parameter names).
"""

import asyncio
import gc
import sys

import devices
from board import Board, load_profile

from protocol.compat import const

try:
    import micropython
except ImportError:  # CPython: no heap to watch
    micropython = None

_IDLE_RETRY_S = const(5)
_MARKS_S = const(30)


def log(text):
    print(text)


async def configure(board, path):
    """config.json and the devices it names -> (cfg, plant); safe idle until both work."""
    import config

    while True:
        try:
            cfg = config.load(path)
            registers = cfg.get("registers_dir") or board.profile.get("registers_dir", "registers")
            plant = devices.open_plant(cfg["devices"], registers, board.serial_port)
            # Each device must answer as its map says (SunSpec models found and bound,
            # values in their sane ranges) before anything is offered or set on it.
            import sunspec

            roles = {"meter": plant.meter, "battery": plant.battery, "inverter": plant.inverter}
            problems = await sunspec.check(roles, board.now_ms())
            if not problems:
                return cfg, plant
            for line in problems:
                log("DEVICE ERROR: %s" % line)
            await plant.close()
        except ValueError as exc:  # ConfigError, or a device or register map problem
            log("CONFIG ERROR: %s" % exc)
        except Exception as exc:  # a value no check foresaw: still one line, never a crash loop
            log("CONFIG ERROR: %s: %s" % (type(exc).__name__, exc))
        await idle(board, "no trading, no setpoints")


async def idle(board, text):
    """Safe idle for _IDLE_RETRY_S, the watchdog fed."""
    log("safe idle: %s; retrying in %d s" % (text, _IDLE_RETRY_S))
    for _ in range(_IDLE_RETRY_S * 10):
        board.feed()
        await asyncio.sleep(0.1)


# No task dies silently: one that fails is logged on one line and started again after a
# backoff (1, 2, 4 ... 60 s), so a failing one cannot spin; a task releases its own
# resources (node.discovery closes its sockets). The loop's exception handler hears of a
# failed task (its default prints a traceback); a table of the tasks' coroutines names
# it. Module-level, with no closures: a small heap paid ~3 KB for a wrapper coroutine per
# task, ~1.5 KB for a watching task's table, and ~1 KB for closures in run().
_watched = []  # the node and config.json's path, for job()
_names = {}  # a task's coroutine -> its name (one entry per task: one that ends stays)
_delays = {}  # a task's name -> its next backoff, once it failed


def job(name):
    """A coroutine of the task called name."""
    node, path = _watched
    executor = node.executor
    if name == "execution":
        return executor.run(node)
    if name == "poll":
        return poll(node.board, node.plant, node.cfg)
    if name == "keep_marks":
        return keep_marks(node, executor.book)
    if name == "report_heap":
        return report_heap(node.cfg)
    if name == "follow_trust":
        return node.follow_trust(path)
    if name == "board_clock":
        return board_clock(node.board, node.cfg)
    return getattr(node, name)()


def start(name, coro):
    _names[coro] = name
    asyncio.create_task(coro)


async def again(delay, name):
    await asyncio.sleep(delay)
    await job(name)


def failed(loop, context):
    """The loop's exception handler: a task that failed is said and started again."""
    task, exc = context.get("future"), context.get("exception")
    coro = (getattr(task, "coro", None) or task.get_coro()) if task else None
    name = _names.pop(coro, None)
    why = "%s: %s" % (type(exc).__name__, exc)
    if name is None:  # not a task of ours (CPython also reports unclosed transports here)
        log("asyncio: %s%s" % (context.get("message"), ": " + why if exc else ""))
        return
    delay = _delays.get(name, 1)
    _delays[name] = min(delay * 2, 60)
    log("task %s failed: %s; restarting in %d s" % (name, why, delay))
    start(name, again(delay, name))


async def poll(board, plant, cfg):
    while True:
        try:
            await plant.poll(board.now_ms())
        except MemoryError:  # a full heap passes: polling must not stop for good
            gc.collect()
            log("poll: out of memory (%d bytes free after a collection)" % gc.mem_free())
        await asyncio.sleep(cfg["poll_ms"] / 1000)


async def board_clock(board, cfg):
    """Resync the clock every ntp_resync_s (board_clock.run). The module is imported for
    each resync and dropped after it, as after start-up: ~1 KB of heap the rest of the hour."""
    while True:
        await asyncio.sleep(cfg["ntp_resync_s"])
        try:
            await __import__("board_clock").run(board, cfg, log)
        finally:
            sys.modules.pop("board_clock", None)


async def keep_marks(node, book):
    """Persist replay high-water marks now and then (not per frame: flash wear)."""
    while True:
        await asyncio.sleep(_MARKS_S)
        book.save_marks(node.codec.replay.marks(), node.ids.last)


def tune_gc():
    """Collect after every quarter of the free heap is allocated, not only when the
    heap is full: live objects then stay packed low in a small heap, and a larger
    buffer still finds room (the usual MicroPython advice for small boards)."""
    gc.collect()
    if micropython is not None:
        gc.threshold(gc.mem_free() // 4)


async def report_heap(cfg):
    """Log the live heap after a collection, and the largest so far, every
    heap_report_s (tests and benchmarks read these lines)."""
    if micropython is None:
        return
    peak = 0
    while True:
        gc.collect()
        used = gc.mem_alloc()
        peak = max(peak, used)
        log("heap: used %d, free %d, peak %d" % (used, gc.mem_free(), peak))
        # "qstr pool: n_pool=.., n_qstr=..": the names interned so far (the heap test keeps
        # them below the step where MicroPython adds a ~7 KB pool; module docstring).
        micropython.qstr_info()
        await asyncio.sleep(cfg.get("heap_report_s", 10))


async def feed_watchdog(board):
    while True:
        board.feed()
        await asyncio.sleep(1)


async def run(profile, config):
    tune_gc()
    board = Board(load_profile(profile), log)
    board.start_watchdog()
    cfg, plant = await configure(board, config)
    # Settings only start-up reads: the keys are in cfg["keyring"], the devices in the plant.
    for key in ("keys", "group", "devices", "hub_key"):
        cfg.pop(key, None)
    # Drop the modules only start-up uses: nothing refers to their functions, so their
    # code and constants are collected (the names they interned stay).
    for name in ("config", "register_map", "jsonfile", "sunspec"):
        sys.modules.pop(name, None)
    gc.collect()
    import contracts
    import execution
    import node as nodes

    from protocol import auth, frame, message

    if board.profile.get("watchdog_ms"):  # none on the unix port: no task to feed it
        asyncio.create_task(feed_watchdog(board))
    asyncio.create_task(board.keep_connected(cfg.get("wifi")))
    # The clock before anything that reads it (the book, the replay guard, the ids): a
    # board reads 2000-01-01 after a power cut, and every frame would be refused.
    # (__import__: a name of 11+ characters in a text is not interned on a board that
    # does not load the module, which keeps the unix port's names below 620; see above.)
    if not board.profile.get("host_keeps_time"):
        try:  # idle meanwhile: no contract can run by an unknown clock, and a reset (the
            await plant.set_power(0)  # watchdog's) may have left a contract's power set
        except Exception as exc:  # a dead inverter: the clock still comes first
            log("inverter: not set idle while the clock is unknown: %s" % exc)
        await __import__("board_clock").start(board, cfg, log)
        sys.modules.pop("board_clock")  # until the first resync (board_clock() below)

    book = contracts.ContractBook(cfg["data_dir"] + "/contracts.rec", flush_s=cfg["flush_s"])
    pending = book.start(board.now_ms() // 1000)
    if book.corrupt:
        log("CONTRACTS RECORD CORRUPT: %s (set aside; starting empty)" % book.corrupt)
    log("contracts: %d live, %d to report, mode %s"
        % (len(book.live()), len(pending), book.mode(board.now_ms() // 1000)))  # fmt: skip

    await plant.poll(board.now_ms())

    replay = auth.ReplayGuard(not_before_ms=board.now_ms())
    replay.restore(book.marks)
    codec = frame.Codec(cfg["keyring"], key_id=cfg["key_id"], replay=replay)
    ids = message.MessageIds(board.now_ms(), floor=book.own_id)
    executor = execution.Executor(cfg, board, plant, book, log)
    node = nodes.Node(cfg, board, plant, executor, codec, ids, log)
    # The first beat before the network starts: the inverter gets its setpoint (a resumed
    # contract's, or idle) while no other Modbus request is in flight with it.
    await executor.beat(node)
    while True:
        try:
            await node.serve()
            break
        except OSError as exc:  # bind is an address, but not this device's (yet)
            log("CONFIG ERROR: cannot listen on %s:%d: %s" % (cfg["bind"], cfg["tcp_port"], exc))
            await idle(board, "nothing is sold")
            await executor.beat(node)  # contracts run and end even while nothing is sold

    _watched[:] = [node, config]
    asyncio.get_event_loop().set_exception_handler(failed)
    for name in ("discovery", "status", "watch_battery", "close_auctions", "execution", "poll",
                 "keep_marks", "report_heap", "follow_trust"):  # fmt: skip
        start(name, job(name))
    if not board.profile.get("host_keeps_time"):  # resyncs: each moves it ntp_max_step_ms at most
        start("board_clock", job("board_clock"))
    if cfg.get("coap_hub"):  # the hub's CoAP resources (coap_client.py): off by default,
        import coap_client  # and only then imported (it costs ~14 KB of a small heap)

        try:
            coap_client.start(cfg, cfg.get("coap_key"), book,
                              lambda price: setattr(node, "price_signal", price), log)  # fmt: skip
        except ValueError as exc:  # a bad coap_hub, or no key: trading goes on without CoAP
            log("CONFIG ERROR: %s (CoAP off)" % exc)
    tune_gc()
    log("battery %d ready on %s:%d (board %s)"
        % (cfg["device_id"], cfg["bind"], cfg["tcp_port"], board.name))  # fmt: skip
    while True:
        await asyncio.sleep(3600)


def main(profile="board.json", config="config.json"):
    """profile: the board profile's path; config: config.json's."""
    asyncio.run(run(profile, config))
