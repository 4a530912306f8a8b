"""Executing contracts: the only code that sets the inverter's power.

At a contract's StartUnixS the inverter setpoint becomes its AvgPowerWatts
(the sum, if several run at once) for DurationMinutes. The meter's export
counter (import, for charging) measures the energy delivered; at the end the
contract completes as CompletedSuccess when at least success_share of the
promised energy was metered, else CompletedFailureByScada. Outcomes reach the
buyer as a TERMINATE answering its BID_CONFIRM, now if it is connected, else
when it next connects (the ContractBook keeps them until reported).

The meter's counters are cumulative, so a missed or stale reading loses
nothing: the next good reading carries the whole difference.
"""

import asyncio

from modbus import ModbusError

from protocol import contract, message


class Executor:
    def __init__(self, cfg, board, plant, book, log):
        self.cfg = cfg
        self.board = board
        self.plant = plant
        self.book = book
        self.log = log
        self.setpoint = None  # watts last written to the inverter
        self.baseline = {}  # contract id -> meter counter (kWh) at the last accounting
        self.receipted = set()  # contracts whose outcome the market maker was sent this boot

    def committed_kwh(self):
        """Energy promised by live contracts and not delivered yet."""
        total = 0.0
        for deal in self.book.live():
            if deal.avg_power_watts > 0:
                left = deal.energy_wh - self.book.delivered_wh(deal.contract_id)
                total += max(0.0, left) / 1000
        return total

    def free_slot(self, now_s, horizon=8):
        """(start, kWh) of the first coming slot the inverter is not yet sold out in:
        a slot holds max_kw for its length. (None, 0.0) when the next `horizon` are full."""
        grid = self.cfg["slot_grid"]
        start = contract.next_slot(grid, now_s)  # never the running slot
        selling = [d for d in self.book.live() if d.avg_power_watts > 0]
        for _ in range(horizon):
            length = contract.slot_length(grid, start)
            capacity = self.cfg["max_kw"] * length / 3600
            sold = sum(d.energy_wh / 1000 for d in selling if d.start_unix_s == start)
            if capacity - sold > capacity / 100:  # a sliver left by rounding is full
                return start, round(capacity - sold, 4)
            start += length
        return None, 0.0

    def contract_from_confirm(self, peer, bid_id, price, kwh, kw, confirm_id, start):
        """A BID_CONFIRM is the buyer creating and confirming the contract; the
        device marks it Received in between (the lifecycle's order)."""
        cfg = self.cfg
        deal = contract.purchase(
            cfg["device_id"], peer, bid_id, contract.slot_length(cfg["slot_grid"], start),
            cfg["gate_s"], cfg["market_maker"], start, kwh, kw,
        )  # fmt: skip
        deal.advance(contract.RECEIVED, contract.DEVICE)
        deal.advance(contract.CONFIRMED, contract.BUYER)
        self.book.add(deal, peer, confirm_id, price)
        return deal

    async def run(self, node):
        """A beat every tick_ms. The first is the caller's (`await executor.beat(node)`
        at start-up): the inverter gets its setpoint before the other tasks start."""
        while True:
            await asyncio.sleep(self.cfg["tick_ms"] / 1000)
            await self.beat(node)

    async def beat(self, node):
        try:
            await self.tick(node, self.board.now_ms())
        except (OSError, ModbusError) as exc:  # a device link down: again next beat
            self.log("execution: %s" % exc)

    async def tick(self, node, now_ms):
        now_s = now_ms // 1000
        book = self.book
        book.expire(now_s)  # confirmed but never started, window over: unknown outcome
        if not book.failsafe:
            for deal in book.due(now_s):
                book.advance(deal.contract_id, contract.ACTIVE)
                self.log("contract %s started: %+d W" % (deal.contract_id, deal.avg_power_watts))
        self.account()
        for deal in book.ended(now_s):
            delivered = book.delivered_wh(deal.contract_id)
            promised = abs(deal.energy_wh)
            ok = delivered >= self.cfg["success_share"] * promised
            state = contract.COMPLETED_SUCCESS if ok else contract.COMPLETED_FAILURE_BY_SCADA
            book.advance(deal.contract_id, state)
            self.baseline.pop(deal.contract_id, None)
            self.log("contract %s %s: %.0f of %.0f Wh" % (
                deal.contract_id, contract.STATE_NAMES[state], delivered, promised))  # fmt: skip
        await self.apply_setpoint()
        await self.report(node)

    def active(self):
        return [d for d in self.book.live() if d.state == contract.ACTIVE]

    def account(self):
        """Meter energy since the last tick into every active contract."""
        plant = self.plant
        active = self.active()
        share = 1.0 / max(1, len(active))  # concurrent contracts split the meter
        for deal in active:
            counter = plant.export_kwh if deal.avg_power_watts > 0 else plant.import_kwh
            if counter is None:
                continue  # stale or failed read: the next good one carries the difference
            last = self.baseline.get(deal.contract_id)
            self.baseline[deal.contract_id] = counter
            if last is not None and counter > last:
                wh = (counter - last) * 1000 * share
                self.book.add_energy(deal.contract_id, wh, self.board.now_ms() // 1000)

    async def apply_setpoint(self):
        watts = 0 if self.book.failsafe else sum(d.avg_power_watts for d in self.active())
        if watts != self.setpoint:
            await self.plant.set_power(watts)
            self.setpoint = watts
            self.log(
                "inverter setpoint %+d W (%s)"
                % (watts, self.book.mode(self.board.now_ms() // 1000))
            )

    async def report(self, node):
        """Tell connected buyers the outcome of their finished contracts, and the market
        maker too (a receipt: when the outcome is first due, once per boot, and again
        when the buyer got it; the hub takes a repeated one once)."""
        for deal, buyer, confirm_id in self.book.reports():
            code = contract.OUTCOME_CODES.get(deal.state)
            if code is None:
                continue
            kwh = round(max(0.0, self.book.delivered_wh(deal.contract_id)) / 1000, 6)
            device = self.cfg["device_id"]
            msg = message.terminate(node.ids.next(), device, code, delivered_kwh=kwh)
            if deal.contract_id not in self.receipted:  # (each receiver has its own window)
                self.receipted.add(deal.contract_id)
                node.send_hub(msg, confirm_id)
            if await node.send_to_peer(buyer, msg, confirm_id):
                self.book.reported(deal.contract_id)
                self.receipted.discard(deal.contract_id)
                # again, a fresh id: the first may have been lost (UDP)
                msg = message.terminate(node.ids.next(), device, code, delivered_kwh=kwh)
                node.send_hub(msg, confirm_id)

    async def stop_all(self, node):
        """Device failure: no discharge, and every live contract is terminated."""
        self.book.failsafe = True
        for deal in self.book.live():
            self.book.advance(deal.contract_id, contract.TERMINATED_BY_SCADA)
            self.baseline.pop(deal.contract_id, None)  # it meters nothing more
        try:
            await self.apply_setpoint()
        except (OSError, ModbusError) as exc:  # the inverter may be down too: every tick retries
            self.setpoint = None
            self.log("could not stop the inverter: %s" % exc)
        await self.report(node)

    def recovered(self):
        self.book.failsafe = False
