"""The platform inside a running hub (a [platform] section in hub.toml, once the lead adds
"platform": "hub.integrations.platform" to hub/config/hub_toml.py INTEGRATIONS, after "settlement").

It shares the settlement's backend and mint (so credits bought here are the ones the
uploader pays with, on the same chain), and every poll_s it:
  - on LiteSVM, executes finalized platform transactions it has not seen (the CLI's, run
    in another process against its own rebuilt chain) so the hub's chain matches the
    journal, through Chain.replay as the rebuild at the hub's start does (settlement's
    Settlement.open, hub/integrations/settlement/rebuild.py: the chain outlives no process, the
    journals do); on a cluster there is nothing to do (one chain for everyone)
  - at its first round, reads the chain's memos (recovery.py: a lost journal/store)
  - finishes pending commands (engine.resume)
  - mints the certificates new metered renewable energy has earned ("minted
    automatically"; each contract's energy is counted once whatever the command id)
  - decides and executes due proposals (gov.tick) and pays each ended epoch's rewards
    once NRG exists
A round's error is logged and the next round tries again: the store and the journal are
the truth, so nothing is lost by a failed round.
"""

import asyncio
import logging
import time

from hub.config import keys_file
from hub.integrations.platform.chain_ops import Keys
from hub.integrations.platform.engine import PlatformError
from hub.integrations.platform.layer import Platform
from hub.integrations.settlement.backends import BackendError
from hub.integrations.settlement.margin import faucet_funded
from transport import tasks

log = logging.getLogger(__name__)


class PlatformService:
    def __init__(self, hub, settings, settlement):
        self.hub, self.settings = hub, settings
        uploader = settlement.uploader
        self.chain = getattr(settlement, "chain", None)
        keys = Keys(settings["keys"], make=self.chain is not None)
        if self.chain is not None:
            self.chain.airdrop(keys.authority.pubkey, 1000 * 10**9)
        self.platform = Platform(hub.store, uploader.backend, keys, uploader.mint, settings)
        self._seen = 0  # rowid of the last journaled transaction replayed
        self._task = None

    def replay_new(self):
        """LiteSVM: run finalized journal entries the chain has never seen (Chain.replay
        skips the ones it has: the start's rebuild ran them all). -> how many ran."""
        if self.chain is None:
            return 0
        rows = self.platform.engine.conn.execute(
            "SELECT rowid, raw FROM platform_txs WHERE status = 'finalized' "
            "AND rowid > ? AND length(raw) > 0 ORDER BY rowid",
            (self._seen,),
        ).fetchall()
        if not rows:
            return 0
        self._seen = rows[-1][0]
        replayed, failed = self.chain.replay(raw for _rowid, raw in rows)
        if failed:
            log.warning("platform: %d journaled transactions did not replay" % failed)
        return replayed

    async def round(self, now=None):
        now = time.time() if now is None else now
        p = self.platform
        self.replay_new()
        if not p.engine.recovered:  # once per start, before anything new is signed
            found = await p.recover()
            if any(found.values()):
                log.info("platform: recovered from the chain's memos: %s" % found)
        if self.chain is not None:  # the faucet funds wallets while the hub runs
            opened = await p.credit.open_funded(faucet_funded(p.engine.conn))
            if opened:
                log.info("platform: LiteSVM funding recorded as openings: %s" % opened)
        await p.engine.resume()
        minted = await p.rec.mint("rec-auto-%d" % int(now * 1000))
        changes = p.gov.tick(now)
        rewards = None
        if p.engine.rows("SELECT 1 FROM gov_token"):
            epoch = p.incentives.epoch_of(now) - p.incentives.rules["epoch_s"]
            rewards = await p.incentives.pay(epoch)
        return {"minted": minted, "changes": changes, "rewards": rewards}

    async def run(self):
        while True:
            try:
                result = await self.round()
                if result["minted"] or result["changes"]:
                    log.info("platform: %s" % result)
            except (PlatformError, BackendError, OSError) as exc:
                log.warning("platform: round failed, retrying: %s" % exc)
            await asyncio.sleep(self.settings["poll_s"])

    async def close(self):
        if self._task is not None:
            self._task.cancel()


async def start(hub, settings):
    settlement = hub.integrations.get("settlement")
    if settlement is None:
        raise PlatformError("[platform] needs [settlement]: its chain and mint are shared")
    # Sources the batteries' own configs declare; hub.toml's [platform.sources] wins.
    settings = dict(settings)
    settings["sources"] = {**keys_file.battery_sources(hub.cfg["keys_file"]),
                           **settings["sources"]}  # fmt: skip
    service = PlatformService(hub, settings, settlement)
    service._task = tasks.keep("platform", service.run)  # an error run() does not expect
    return service
