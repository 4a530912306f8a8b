"""The JSON-RPC backend: a cluster (devnet, mainnet) or a local validator, through
solana-py's AsyncClient (the interface is in hub/integrations/settlement/backends.py).

Commitments are chosen for the uploader's one irreversible decision, to sign a new
transaction for a part whose last one is "not found": the block height and the nonce
are read at *finalized* commitment, and the statuses with the full history. A finalized
height past a transaction's last valid block height means every block that could hold
it is finalized or abandoned, so "not found" then is final
(hub/integrations/settlement/uploader.py).

The client does not retry on its own (max_transport_retries=0): the uploader re-sends
the same signed bytes on its next round, which is the one retry policy to reason about.
"""

import asyncio

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Confirmed, Finalized
from solana.rpc.core import RPCException, RPCNoResultException
from solana.rpc.models import TxOpts
from solders.transaction_status import TransactionConfirmationStatus

from hub.integrations.settlement.backends import BackendError, SendError, Status

FAILURES = (SolanaRpcException, RPCException, RPCNoResultException, OSError, ValueError)
STATUS_BATCH = 256  # getSignatureStatuses takes at most 256 signatures
HISTORY_PAGE = 1000  # getSignaturesForAddress returns at most 1,000 per call


class RpcBackend:
    def __init__(self, url, timeout_s=10.0, poll_s=0.4, concurrency=16):
        self.name = url
        self.concurrency = concurrency  # sends in flight at once (uploader.push)
        self.poll_s = poll_s  # a cluster's block time
        self.client = AsyncClient(url, timeout=timeout_s, max_transport_retries=0)

    async def _call(self, what, call):
        try:
            return await call
        except FAILURES as exc:
            raise BackendError("%s: %s" % (what, exc or type(exc).__name__)) from None
        except BaseException as exc:
            _reraise_unless_panic(exc, what)

    async def latest_blockhash(self):
        got = await self._call("getLatestBlockhash", self.client.get_latest_blockhash(Confirmed))
        return got.value.blockhash, got.value.last_valid_block_height

    async def finalized_height(self):
        return (await self._call("getBlockHeight", self.client.get_block_height(Finalized))).value

    async def wait_past(self, height):
        while await self.finalized_height() <= height:
            await asyncio.sleep(self.poll_s)

    async def send(self, raw):
        opts = TxOpts(skip_confirmation=True, preflight_commitment=Confirmed)
        try:
            await self.client.send_raw_transaction(raw, opts)
        except RPCException as exc:
            # A node's preflight refusal: its message is enough (the data is long).
            text = str(getattr(exc.args[0], "message", exc) if exc.args else exc)
            if "AlreadyProcessed" not in text:  # re-sent bytes that already landed: fine
                raise SendError("sendTransaction: %s" % text) from None
        except FAILURES as exc:
            raise SendError("sendTransaction: %s" % (exc or type(exc).__name__)) from None
        except BaseException as exc:
            _reraise_unless_panic(exc, "sendTransaction", SendError)

    async def statuses(self, signatures):
        out = []
        for i in range(0, len(signatures), STATUS_BATCH):
            chunk = signatures[i : i + STATUS_BATCH]
            got = await self._call(
                "getSignatureStatuses",
                self.client.get_signature_statuses(chunk, search_transaction_history=True),
            )
            for status in got.value:
                if status is None:
                    out.append(None)
                    continue
                final = status.confirmation_status == TransactionConfirmationStatus.Finalized
                out.append(Status(None if status.err is None else str(status.err), final))
        return out

    async def history(self, address, since):
        out, before = [], None
        while True:
            got = await self._call(
                "getSignaturesForAddress",
                self.client.get_signatures_for_address(
                    address, before=before, limit=HISTORY_PAGE, commitment=Finalized
                ),
            )
            page = got.value
            for x in page:
                if x.block_time is not None and x.block_time < since:
                    return out
                out.append((x.signature, x.memo, None if x.err is None else str(x.err)))
            if len(page) < HISTORY_PAGE:
                return out
            before = page[-1].signature

    async def account_data(self, address):
        got = await self._call("getAccountInfo", self.client.get_account_info(address, Finalized))
        return None if got.value is None else bytes(got.value.data)

    async def token_balance(self, address):
        try:
            got = await self.client.get_token_account_balance(address, Finalized)
        except RPCException:
            return None  # no such token account (yet)
        except FAILURES as exc:
            raise BackendError("getTokenAccountBalance: %s" % exc) from None
        except BaseException as exc:
            _reraise_unless_panic(exc, "getTokenAccountBalance")
        return int(got.value.amount)

    async def close(self):
        await self.client.close()


def _reraise_unless_panic(exc, what, kind=BackendError):
    """solders' parsers panic (pyo3_runtime.PanicException, a BaseException that cannot be
    imported by name) on an answer they cannot read: that is the node's fault, a
    BackendError like any other; cancellation and interrupts go on as they are."""
    if type(exc).__name__ == "PanicException":
        raise kind("%s: unreadable answer: %s" % (what, exc)) from None
    raise exc
