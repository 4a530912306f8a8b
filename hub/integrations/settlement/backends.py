"""Where transactions go: one small interface, two backends.

    latest_blockhash()      -> (Hash, last valid block height)
    finalized_height()      -> the finalized block height
    wait_past(height)       returns once the finalized height is above `height`
    send(raw)               broadcast signed bytes; SendError if refused, which proves
                            nothing about landing (only statuses and expiry do)
    statuses([Signature])   -> [Status or None (never seen)], with the full history
    history(address, since) -> [(Signature, memo text or None, err or None)], newest first,
                            back to unix time `since` (reconciliation reads the memos)
    account_data(address)   -> bytes or None     (durable nonces)
    token_balance(address)  -> base units or None
    close()
    concurrency             how many sends the uploader may have in flight at once

Every call may raise BackendError (the chain is unreachable): the uploader tries again
on its next round. LiteSVMBackend (below) is the in-process chain of
hub/integrations/settlement/chain.py;
RpcBackend (hub/integrations/settlement/rpc_backend.py) speaks JSON-RPC to a cluster.
"""

import asyncio
from collections import namedtuple

Status = namedtuple("Status", "err finalized")  # err: None or the error's text


class BackendError(Exception):
    """The chain could not be asked (unreachable, timed out, answered nonsense)."""


class SendError(BackendError):
    """A transaction was refused when sent. It may still land (an earlier send of the
    same bytes), so this is recorded, never taken as proof that it did not."""


class LiteSVMBackend:
    """The in-process chain (default: the demo and the tests). Every call is a few
    hundred microseconds of CPU at most, so it runs in the hub's event loop."""

    name = "litesvm"
    concurrency = 1  # sends run one after the other anyway: keep their order

    def __init__(self, chain):
        self.chain = chain

    async def latest_blockhash(self):
        return self.chain.latest_blockhash()

    async def finalized_height(self):
        return self.chain.block_height()

    async def wait_past(self, height):
        # No cluster moves on by itself here: produce the blocks instead of waiting.
        now = self.chain.block_height()
        if now <= height:
            self.chain.new_block(height - now + 1)

    async def send(self, raw):
        await asyncio.sleep(0)  # let the hub's loop run between transactions
        _sig, err, landed = self.chain.send(raw)
        if err is not None and not landed and err != "AlreadyProcessed":
            raise SendError(err)

    async def statuses(self, signatures):
        out = []
        for signature in signatures:
            found = self.chain.status(signature)
            out.append(None if found is None else Status(found.err, True))
        return out

    async def history(self, address, since):
        return [
            (x.signature, x.memo, x.err)
            for x in self.chain.signatures_for_address(address, limit=10**9)
            if x.block_time >= since
        ]

    async def account_data(self, address):
        return self.chain.account_data(address)

    async def token_balance(self, address):
        return self.chain.token_balance(address)

    async def close(self):
        pass
