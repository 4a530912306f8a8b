"""The hub's CoAP resources (hub/integrations/coap.py) and protocol/coap.py on CPython, with
real parts only: a Hub with its SQLite store and ledger (tests/helpers/coap_hub.py), its aiocoap
server on a free loopback port, and aiocoap as the test's client. The battery's client on
the MicroPython VM against the same server: tests/firmware/test_coap_vm.py."""

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time

import aiocoap
import pytest
from aiocoap.numbers.optionnumbers import OptionNumber
from helpers.coap_hub import (
    BUYER,
    DEVICE,
    KEYS,
    OTHER,
    PRICE,
    SLOT_S,
    STRANGER,
    bought,
    key,
    now_ms,
    running_hub,
    seed,
)  # fmt: skip

from hub.config import hub_toml
from hub.integrations.coap import CoapServer
from protocol import auth, coap, contract

pytestmark = pytest.mark.timeout(60)


# --- the test's own client: aiocoap -------------------------------------------------------


@contextlib.asynccontextmanager
async def coap_client():
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


def signed_request(port, path, device=DEVICE, signer=None, ts=None, nonce=None, value=None):
    if value is None:
        value = coap.sign_request(signer or key(device), device, coap.GET, path,
                                  now_ms() if ts is None else ts,
                                  random.getrandbits(32) if nonce is None else nonce)  # fmt: skip
    msg = aiocoap.Message(code=aiocoap.GET, uri="coap://127.0.0.1:%d/%s" % (port, path))
    msg.opt.add_option(OptionNumber(coap.AUTH).create_option(value=value))
    return msg, value


async def ask(ctx, port, path, **how):
    msg, value = signed_request(port, path, **how)
    response = await asyncio.wait_for(ctx.request(msg).response, 10)
    return response, value


def hub_ms(response, value, path, device=DEVICE):
    """The signature's hub time if the answer is signed with the device's key, else None."""
    found = response.opt.get_option(coap.AUTH)
    return coap.response_hub_ms(key(device), value, int(response.code), path,
                                found[0].value if found else None, response.payload)  # fmt: skip


def refused(response, reason):
    assert response.code == aiocoap.UNAUTHORIZED, (response, response.payload)
    assert reason in response.payload.decode(), response.payload
    assert not response.opt.get_option(coap.AUTH)  # nothing to sign it with
    return response.payload.decode()


def test_the_codec_agrees_with_aiocoap():
    options = [(coap.OBSERVE, b""), (coap.URI_PATH, b"contracts"), (coap.URI_PATH, b"1001"),
               (coap.AUTH, b"a" * 32)]  # fmt: skip
    ours = coap.encode(coap.CON, coap.GET, 0x1234, b"tok", options, b"p")
    theirs = aiocoap.Message.decode(ours)
    assert (theirs.mtype, theirs.code, theirs.mid, theirs.token) == (
        aiocoap.CON, aiocoap.GET, 0x1234, b"tok")  # fmt: skip
    assert theirs.opt.uri_path == ("contracts", "1001") and theirs.opt.observe == 0
    assert theirs.opt.get_option(coap.AUTH)[0].value == b"a" * 32 and theirs.payload == b"p"
    response = aiocoap.Message(_mtype=aiocoap.NON, _mid=7, _token=b"\x01\x02", code=aiocoap.CONTENT,
                               payload=b"x" * 300, content_format=42, max_age=60,
                               observe=70000)  # fmt: skip
    m = coap.decode(response.encode())
    assert (m.mtype, m.code, m.mid, m.token, m.payload) == (
        coap.NON, coap.CONTENT, 7, b"\x01\x02", b"x" * 300)  # fmt: skip
    assert coap.to_uint(coap.option(m.options, coap.OBSERVE)) == 70000
    assert coap.to_uint(coap.option(m.options, coap.MAX_AGE)) == 60
    assert coap.to_uint(coap.option(m.options, 12)) == 42


def test_tags_are_the_documented_hmac():
    """protocol/coap.py's layout, rebuilt by hand and tagged by CPython's hmac."""
    secret, path = KEYS[DEVICE], b"contracts/1001"
    value = coap.sign_request(key(DEVICE), DEVICE, coap.GET, path.decode(), 1763700000123, 42)
    signed = (b"GBq1" + bytes([coap.GET]) + DEVICE.to_bytes(4, "big")
              + (1763700000123).to_bytes(8, "big") + (42).to_bytes(4, "big")
              + len(path).to_bytes(2, "big") + path)  # fmt: skip
    assert value[16:] == hmac.new(secret, signed, hashlib.sha256).digest()[:16]
    answer = coap.sign_response(key(DEVICE), value, coap.CONTENT, path.decode(), 99, b"pay")
    signed = signed[: 4 + 1 + 4 + 8 + 4].replace(b"GBq1", b"GBr1", 1)
    signed = (signed[:4] + bytes([coap.CONTENT]) + signed[5:] + (99).to_bytes(8, "big")
              + len(path).to_bytes(2, "big") + path + b"pay")  # fmt: skip
    assert (
        answer == (99).to_bytes(8, "big") + hmac.new(secret, signed, hashlib.sha256).digest()[:16]
    )


def test_time_and_contracts_are_signed_for_the_device(tmp_path):
    async def scenario():
        async with running_hub(tmp_path) as hub, coap_client() as ctx:
            ids = seed(hub)
            before = now_ms()
            response, value = await ask(ctx, hub.port, "time")
            assert response.code == aiocoap.CONTENT and response.opt.content_format == 0
            assert before <= int(response.payload) <= now_ms()
            assert hub_ms(response, value, "time") >= before
            assert hub_ms(response, value, "time", device=OTHER) is None  # not OTHER's key

            path = "contracts/%d" % DEVICE
            response, value = await ask(ctx, hub.port, path)
            assert response.code == aiocoap.CONTENT and response.opt.content_format == 42
            assert hub_ms(response, value, path) is not None
            listed, omitted = coap.decode_contracts(response.payload)
            assert omitted == 0
            # binding ones by start, then the recently ended; Received, too old and
            # another device's contracts are not listed
            names = {v: k for k, v in ids.items()}
            assert [names[c.contract_id] for c, *_ in listed] == [
                "running", "confirmed", "later", "done"]  # fmt: skip
            for c, buyer, confirm_id, price in listed:
                row = hub.store.contract(c.contract_id)
                assert c.to_json_dict() == row["json"]  # the store's MarketContract JSON
                assert (buyer, confirm_id, price) == (row["buyer"], row["confirm_id"], PRICE)
            assert [c.state_name for c, *_ in listed] == [
                "Confirmed", "Confirmed", "Confirmed", "CompletedSuccess"]  # fmt: skip
            assert len(response.payload) < 400  # ~80 bytes a contract

    asyncio.run(scenario())


def test_a_long_list_is_bounded_to_one_datagram(tmp_path):
    async def scenario():
        # The longest market maker name a slot name allows: ~150-byte entries
        async with running_hub(tmp_path, name="m" * 70, max_contracts=12) as hub:
            hub.store.add_device(DEVICE, DEVICE, "127.0.0.1")
            nxt = contract.next_slot((SLOT_S, 0, SLOT_S), time.time())
            for n in range(14):
                bought(hub, DEVICE, BUYER, 100 + n, nxt + n * SLOT_S, 6000 + n)
            async with coap_client() as ctx:
                response, value = await ask(ctx, hub.port, "contracts/%d" % DEVICE)
            listed, omitted = coap.decode_contracts(response.payload)
            assert len(response.payload) <= 1024
            assert response.opt.block2 is None  # no block-wise transfer needed
            assert 0 < len(listed) < 12 and omitted == 14 - len(listed)
            assert [c.start_unix_s for c, *_ in listed] == [
                nxt + n * SLOT_S for n in range(len(listed))]  # the soonest first  # fmt: skip

    asyncio.run(scenario())


def test_requests_that_do_not_authenticate_get_4_01_and_a_reason(tmp_path):
    async def scenario():
        async with running_hub(tmp_path) as hub, coap_client() as ctx:
            seed(hub)
            port, path = hub.port, "contracts/%d" % DEVICE
            unsigned = aiocoap.Message(code=aiocoap.GET, uri="coap://127.0.0.1:%d/time" % port)
            response = await asyncio.wait_for(ctx.request(unsigned).response, 10)
            refused(response, "no auth option")
            response, _ = await ask(ctx, port, "price", device=STRANGER, signer=key(DEVICE))
            refused(response, "bad tag for device 4242")  # no battery holds 4242's key
            # an aggregator's key id: it has a CoAP key by derivation, but it is no battery
            response, _ = await ask(ctx, port, "price", device=BUYER)
            refused(response, "unknown device 1")
            response, _ = await ask(ctx, port, path, signer=key(OTHER))  # the wrong key
            refused(response, "bad tag for device 1001")
            # signed for /time, sent to /contracts: the path is part of what is signed
            value = coap.sign_request(key(DEVICE), DEVICE, coap.GET, "time", now_ms(), 7)
            response, _ = await ask(ctx, port, path, value=value)
            refused(response, "bad tag")
            text = refused((await ask(ctx, port, path, ts=now_ms() - 95_000))[0], "stale")
            assert "-95" in text and "window 30 s" in text and "GET /time" in text
            refused((await ask(ctx, port, path, ts=now_ms() + 60_000))[0], "stale")
            # a captured request sent again (a new CoAP message: aiocoap's own
            # deduplication would only repeat the answer to the same message id)
            response, value = await ask(ctx, port, path)
            assert response.code == aiocoap.CONTENT
            refused((await ask(ctx, port, path, value=value))[0], "replayed")
            # /time answers a replay: its answer is bound to the old nonce, useless
            response, value = await ask(ctx, port, "time", ts=1000)  # a board without a clock
            assert response.code == aiocoap.CONTENT
            response, _ = await ask(ctx, port, "time", value=value)
            assert response.code == aiocoap.CONTENT and hub_ms(response, value, "time")

            # authentic, but another device's contracts: 4.03, signed
            other = "contracts/%d" % OTHER
            response, value = await ask(ctx, port, other)
            assert response.code == aiocoap.FORBIDDEN, response
            assert response.payload == b"device 1001 may read only /contracts/1001"
            assert hub_ms(response, value, other) is not None
            response, value = await ask(ctx, port, "contracts/abc")
            assert response.code == aiocoap.NOT_FOUND and hub_ms(response, value, "contracts/abc")

            said = "\n".join(hub.logs)
            assert "coap: 4.01 to 127.0.0.1" in said and "no auth option" in said
            for secret in KEYS.values():  # keys never in the log
                assert secret.hex() not in said and secret.hex()[:16] not in said

    asyncio.run(scenario())


def test_well_known_core_lists_the_resources_without_auth(tmp_path):
    async def scenario():
        async with running_hub(tmp_path) as hub, coap_client() as ctx:
            where = "coap://127.0.0.1:%d/.well-known/core" % hub.port
            msg = aiocoap.Message(code=aiocoap.GET, uri=where)
            response = await asyncio.wait_for(ctx.request(msg).response, 10)
            assert response.code == aiocoap.CONTENT
            assert response.opt.content_format == 40
            links = {link.split(";")[0]: link for link in response.payload.decode().split(",")}
            assert set(links) == {"</price>", "</time>", "</contracts>", "</.well-known/core>"}
            assert "obs" in links["</price>"] and 'rt="gridbid.price"' in links["</price>"]
            assert 'ct="42"' in links["</contracts>"]

    asyncio.run(scenario())


def test_price_observers_are_notified_within_100_ms(tmp_path):
    async def scenario():
        async with running_hub(tmp_path, max_age_s=30) as hub, coap_client() as ctx:
            msg, value = signed_request(hub.port, "price")
            msg.opt.observe = 0
            request = ctx.request(msg)
            got = asyncio.Queue()

            async def notifications():
                async for note in request.observation:
                    got.put_nowait((time.perf_counter(), note))

            reader = asyncio.create_task(notifications())
            first = await asyncio.wait_for(request.response, 10)
            slot_s = hub.cfg["slot_s"]  # and the slot grid, which never changed here
            assert json.loads(first.payload) == {"price": None, "slot": None, "at": None,
                                                 "grid": [slot_s, 0, slot_s]}  # fmt: skip
            assert first.opt.observe == 0 and first.opt.max_age == 30
            last = hub_ms(first, value, "price")
            latencies = []
            for price in (17.25, 19.5, 16.0):
                await asyncio.sleep(0.05)
                sent = time.perf_counter()
                hub.events.emit("price", slot="rt15gate5.hub.0", price=price, demand=2.0,
                                supply=1.0)  # fmt: skip
                at, note = await asyncio.wait_for(got.get(), 5)
                latencies.append(at - sent)
                assert json.loads(note.payload)["price"] == price
                signed = hub_ms(note, value, "price")
                assert signed is not None and signed > last  # signed, and newer each time
                last = signed
            print("notify latency ms:", [round(x * 1000, 2) for x in latencies])
            assert max(latencies) < 0.1, latencies
            request.observation.cancel()
            reader.cancel()

    asyncio.run(scenario())


def test_a_port_in_use_is_named(tmp_path):
    async def scenario():
        async with running_hub(tmp_path) as hub:
            with pytest.raises(OSError) as err:
                await CoapServer(hub, hub.coap.settings).start()
            assert "[coap] cannot listen on 127.0.0.1:%d" % hub.port in str(err.value)

    asyncio.run(scenario())


def test_the_firmware_client_starts_only_when_set_and_names_bad_settings():
    import coap_client  # firmware/ (tests/conftest.py puts it on sys.path)

    key = auth.HmacKey(KEYS[DEVICE])
    cfg = {"device_id": DEVICE, "key_id": DEVICE, "market_maker": "hub", "slot_s": SLOT_S,
           "max_kw": 5.0}  # fmt: skip
    assert coap_client.start(cfg, key, None, print) is None  # off by default
    for bad, given, why in (
        ({"coap_hub": "hub.local"}, key, 'coap_hub must be "host:port"'),
        ({"coap_hub": "hub.local:coap"}, key, 'coap_hub must be "host:port"'),
        ({"coap_hub": "127.0.0.1:5683", "key_id": 7}, key, "key_id == device_id"),
        ({"coap_hub": "127.0.0.1:5683"}, None, "coap_hub needs coap_key"),
    ):
        with pytest.raises(ValueError) as err:
            coap_client.start({**cfg, **bad}, given, None, print)
        assert why in str(err.value), err.value


def test_coap_settings_are_checked(tmp_path):
    base = {"hub": {}, "aggregator": [{"key_id": 1}]}
    for bad, fault in (
        ({"port": 0}, "port must be a whole number 1..65535"),
        ({"bind": "my-hub"}, "bind must be an IP address"),
        ({"max_age_s": 1.5}, "max_age_s must be a whole number"),
        ({"replay_window_s": 0}, "replay_window_s must be a finite number 1..3600"),
        ({"max_contracts": 40}, "max_contracts must be a whole number 1..12"),
        ({"colour": "red"}, "unknown settings ['colour']"),
    ):
        with pytest.raises(hub_toml.ConfigError) as err:
            hub_toml.check({**base, "coap": bad}, base=tmp_path, keys=False)
        assert "[coap]" in str(err.value) and fault in str(err.value), err.value
    cfg = hub_toml.check({**base, "coap": {"port": 5684}}, base=tmp_path, keys=False)
    assert cfg["integrations"]["coap"] == {
        "bind": "127.0.0.1", "port": 5684, "max_age_s": 60, "replay_window_s": 30,
        "max_contracts": 8, "recent_s": 3600,
    }  # fmt: skip
