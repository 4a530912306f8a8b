"""Wi-Fi for boards that have it: board.keep_connected() hands over to this module,
so a board on a wire (and the unix port) never loads it."""

import asyncio


async def keep_connected(cfg, log, wlan=None):
    """Join the network ({"ssid", "password"}) and rejoin whenever the link drops,
    backing off 1 s -> 60 s. wlan: the radio (network.WLAN by default)."""
    if wlan is None:
        import network  # boards only

        wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    delay = 1
    while True:
        if not wlan.isconnected():
            log("wifi: connecting to %s" % cfg["ssid"])
            wlan.connect(cfg["ssid"], cfg["password"])
            for _ in range(100):
                if wlan.isconnected():
                    break
                await asyncio.sleep(0.1)
            if not wlan.isconnected():
                log("wifi: no link, retrying in %d s" % delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            delay = 1
            log("wifi: connected as %s" % wlan.ifconfig()[0])
        await asyncio.sleep(2)
