"""firmware/coap_client.py on the MicroPython VM, for tests/hub/integrations/test_coap.py:

    micropython tests/firmware/coap_vm.py SETTINGS.json

SETTINGS is a battery's config.json part (device_id, key_id, coap_key, group,
market_maker, slot_s, max_kw, coap_*) plus "mode" and what the mode needs:

    session  coap_client.start() as app.py calls it, with the ContractBook at
             "book"; prints the client's log lines and "PRICE <c/kWh> <unix us>"
             for each price; ends after the price "until_price"
    get      Client.request(path) for each of "paths" ("non:<path>": as NON, "time":
             Client.sync_time(), printing "CLOCK <hub ms> <offset>"); prints
             "GOT <path> <code> <payload hex> acked=<0|1>"
    heap     gc.mem_alloc() around the import, the running client and a reconcile
             against the book at "book"; prints "HEAP <name> <bytes>"

Every line goes to stdout as it happens (the test reads them as they come). The
modules come from MICROPYPATH (the test's compiled bundle), or from a ROMFS image
mounted at /rom as firmware/main.py mounts it (tools/romvm.py maps it).
"""

import asyncio
import gc
import json
import os
import sys
import time


def rom():
    where = getattr(os, "getenv", lambda name: None)("GRIDBID_ROMFS")
    if where:
        import uctypes
        import vfs

        address, size = where.split(":")
        vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(address, 16), int(size))), "/rom")
        sys.path.append("/rom")


rom()
import contracts  # noqa: E402  (from /rom when an image is mounted)

from protocol import auth  # noqa: E402
from protocol.compat import hexlify, unhexlify  # noqa: E402


def out(*words):
    print(" ".join([str(w) for w in words]))


def now_ms():
    return time.time_ns() // 1000000


def coap_key(cfg):
    """The battery's CoAP pair key with the hub, as config.check makes cfg["coap_key"]."""
    return auth.HmacKey(unhexlify(cfg["coap_key"]))


async def session(cfg, book):
    import coap_client

    prices = []

    def on_price(price):
        prices.append(price)
        out("PRICE", price, time.time_ns() // 1000)

    task = coap_client.start(cfg, coap_key(cfg), book, on_price, out)
    while cfg["until_price"] not in prices:
        await asyncio.sleep(0.01)
    gc.collect()
    out("HEAP session", gc.mem_alloc(), gc.mem_free())  # everything, this script included
    task.cancel()
    await asyncio.sleep(0)


async def get(cfg):
    import coap_client

    host, port = cfg["coap_hub"].split(":")
    client = coap_client.Client(host, int(port), cfg["key_id"], coap_key(cfg), out,
                                cfg["coap_ack_ms"])  # fmt: skip
    client.open()
    for path in cfg["paths"]:
        if path == "time":
            out("CLOCK", await client.sync_time(), client.offset_ms)
            continue
        con = not path.startswith("non:")
        ex = await client.request(path if con else path[4:], con=con)
        client.exchanges.pop(ex.token, None)
        code, payload = ex.reply
        out("GOT", path, code, hexlify(payload) or "-", "acked=%d" % ex.acked)
    client.close()


async def heap(cfg, book):
    # What the app has loaded and running before it would start the client: the
    # protocol modules (frame brings namedtuple), and asyncio polling a socket.
    import socket

    from protocol import frame, message  # noqa: F401

    idle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    idle.setblocking(False)
    waiting = asyncio.create_task(asyncio.StreamReader(idle).read(0))
    await asyncio.sleep(0)
    loaded = (asyncio.wait_for, asyncio.Lock)  # loaded on first use; the app uses them
    key = coap_key(cfg)  # the app's cfg holds it
    gc.collect()
    base = gc.mem_alloc()
    import coap_client  # and protocol.coap

    gc.collect()
    out("HEAP import", gc.mem_alloc() - base)
    host, port = cfg["coap_hub"].split(":")
    client = coap_client.Client(host, int(port), cfg["key_id"], key, out)
    client.open()
    await client.sync_time()
    gc.collect()
    out("HEAP running", gc.mem_alloc() - base)
    before = gc.mem_alloc()
    gc.disable()  # everything a reconcile allocates, garbage included
    code, payload = await client.get("contracts/%d" % cfg["device_id"])
    out("HEAP get_allocated", gc.mem_alloc() - before)
    hub, omitted = coap_client.coap.decode_contracts(payload)
    out("HEAP decode_allocated", gc.mem_alloc() - before)
    found = coap_client.reconcile(book, hub, client.now_ms() // 1000, omitted, None, out)
    out("HEAP reconcile_allocated", gc.mem_alloc() - before)
    gc.enable()
    gc.collect()
    out("HEAP reconcile_held", gc.mem_alloc() - before)
    out("RECONCILED", code, len(hub), found["agree"], gc.mem_free())
    client.close()
    waiting.cancel()
    idle.close()
    del loaded


def main(path):
    with open(path) as f:
        cfg = json.load(f)
    book = None
    if "book" in cfg:
        book = contracts.ContractBook(cfg["book"])
        book.start(now_ms() // 1000)
    mode = cfg["mode"]
    if mode == "session":
        asyncio.run(session(cfg, book))
    elif mode == "get":
        asyncio.run(get(cfg))
    else:
        asyncio.run(heap(cfg, book))
    out("DONE")


main(sys.argv[1])
