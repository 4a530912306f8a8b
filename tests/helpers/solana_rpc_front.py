"""A loopback Solana JSON-RPC front end over the in-process chain
(hub/integrations/settlement/chain.py,
LiteSVM): the RPC backend (hub/integrations/settlement/rpc_backend.py, solana-py's AsyncClient) is
tested against it, as no solana-test-validator exists here.

It answers the methods the backend uses, with solders' own response types (so what the
client parses is what a node sends): getLatestBlockhash, getBlockHeight, sendTransaction,
getSignatureStatuses, getSignaturesForAddress, getAccountInfo, getTokenAccountBalance,
getHealth. HTTP/1.1 with keep-alive on 127.0.0.1, Nagle off (TCP_NODELAY: a small
response would otherwise wait ~40 ms for the client's delayed ACK).

Faults, for the tests: fault(method, "lost_response") processes the next such request
and closes the connection without answering (the client sees a broken connection, the
chain has the transaction); fault(method, "lost_request") closes it unprocessed.

Run alone (the bench's RPC path, so the chain has its own core):
    python tests/helpers/solana_rpc_front.py --wallets DIR --aggregators 1,2,3
provisions the chain for those aggregators' wallets (hub/integrations/settlement/provision.py) and
prints "READY <url> <mint>".
"""

import argparse
import asyncio
import base64
import json
import socket
import sys
from pathlib import Path

from solders.account import Account
from solders.account_decoder import UiTokenAmount
from solders.pubkey import Pubkey
from solders.rpc import responses as r
from solders.signature import Signature
from solders.transaction_status import TransactionConfirmationStatus, TransactionStatus

FINALIZED = TransactionConfirmationStatus.Finalized


class RpcFront:
    def __init__(self, chain, decimals=6):
        self.chain, self.decimals = chain, decimals
        self.faults = []  # [(method, "lost_response" | "lost_request")], used in order
        self.calls = {}  # method -> count
        self.server = None
        self.url = None
        self._tasks = set()  # one per connection
        self.delay_s = 0.0  # added to every answer (a remote node's latency)

    async def start(self, host="127.0.0.1", port=0):
        self.server = await asyncio.start_server(self._client, host, port)
        port = self.server.sockets[0].getsockname()[1]
        self.url = "http://%s:%d" % (host, port)
        return self

    async def close(self):
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.server.wait_closed()

    def fault(self, method, kind):
        self.faults.append((method, kind))

    async def _client(self, reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = json.loads(await reader.readexactly(length))
                fault = self._take_fault(request.get("method"))
                if fault == "lost_request":
                    break
                body = self.handle(request)
                if fault == "lost_response":
                    break
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)  # a distant node's round trip
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # close(): the connection ends with the server
        finally:
            self._tasks.discard(task)
            writer.close()

    def _take_fault(self, method):
        for i, (name, kind) in enumerate(self.faults):
            if name == method:
                del self.faults[i]
                return kind
        return None

    def handle(self, request):
        method, params = request.get("method"), request.get("params") or []
        self.calls[method] = self.calls.get(method, 0) + 1
        handler = getattr(self, "_" + method, None)
        if handler is None:
            out = {"error": {"code": -32601, "message": "Method not found"}}
        else:
            try:
                out = handler(*params)
            except (TypeError, ValueError) as exc:  # bad params: answer as a node would
                out = {"error": {"code": -32602, "message": "Invalid params: %s" % exc}}
        if isinstance(out, str):  # a solders response's JSON
            out = json.loads(out)
            out.pop("id", None)
        out.update(jsonrpc="2.0", id=request.get("id"))
        return json.dumps(out).encode()

    def _context(self):
        return r.RpcResponseContext(self.chain.block_height())

    # --- methods --------------------------------------------------------------------

    def _getHealth(self, *_):
        return {"result": "ok"}

    def _getLatestBlockhash(self, *_):
        blockhash, last_valid = self.chain.latest_blockhash()
        return r.GetLatestBlockhashResp(r.RpcBlockhash(blockhash, last_valid),
                                        self._context()).to_json()  # fmt: skip

    def _getBlockHeight(self, *_):
        return r.GetBlockHeightResp(self.chain.block_height()).to_json()

    def _sendTransaction(self, data, config=None):
        raw = base64.b64decode(data)
        signature, err, landed = self.chain.send(raw)
        if err is not None and not landed:
            # What a node's preflight answers (it does not forward the transaction).
            as_json = json.loads(TransactionStatus(0, None, None, self.chain.last_error,
                                                   None).to_json())["err"]  # fmt: skip
            return {"error": {"code": -32002, "message": "Transaction simulation failed: %s"
                              % err, "data": {"err": as_json, "logs": [], "accounts": None,
                                              "unitsConsumed": 0, "returnData": None}}}  # fmt: skip
        return r.SendTransactionResp(signature).to_json()

    def _getSignatureStatuses(self, signatures, config=None):
        out = []
        for text in signatures:
            found = self.chain.status(Signature.from_string(text))
            if found is None:
                out.append(None)
            else:
                out.append(TransactionStatus(found.slot, None, None, found.error, FINALIZED))
        return r.GetSignatureStatusesResp(out, self._context()).to_json()

    def _getSignaturesForAddress(self, address, config=None):
        config = config or {}
        before = config.get("before")
        found = self.chain.signatures_for_address(
            Pubkey.from_string(address),
            before=Signature.from_string(before) if before else None,
            limit=config.get("limit") or 1000,
        )
        return r.GetSignaturesForAddressResp([
            r.RpcConfirmedTransactionStatusWithSignature(
                x.signature, x.slot, x.error, x.memo, x.block_time, FINALIZED)
            for x in found
        ]).to_json()  # fmt: skip

    def _getAccountInfo(self, address, config=None):
        account = self.chain.svm.get_account(Pubkey.from_string(address))
        if account is not None and account.lamports == 0:
            account = None
        if account is not None:
            account = Account(account.lamports, bytes(account.data), account.owner,
                              account.executable, account.rent_epoch)  # fmt: skip
        return r.GetAccountInfoResp(account, self._context()).to_json()

    def _getTokenAccountBalance(self, address, config=None):
        amount = self.chain.token_balance(Pubkey.from_string(address))
        if amount is None:
            return {"error": {"code": -32602, "message": "Invalid param: could not find account"}}
        ui = amount / 10**self.decimals
        value = UiTokenAmount(ui, self.decimals, str(amount), repr(ui))
        return r.GetTokenAccountBalanceResp(value, self._context()).to_json()


async def _serve(args):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from hub.integrations.settlement import wallets
    from hub.integrations.settlement.chain import Chain
    from hub.integrations.settlement.provision import provision

    chain = Chain(valid_blocks=args.valid_blocks, block_s=args.block_s)
    payers = wallets.payers(args.wallets, [int(x) for x in args.aggregators.split(",")])
    mint = provision(chain, args.wallets, payers, args.fund_credits, 6)
    front = await RpcFront(chain).start(port=args.port)
    front.delay_s = args.delay_ms / 1000
    print("READY %s %s" % (front.url, mint), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", required=True)
    parser.add_argument("--aggregators", required=True, help="key ids, comma-separated")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--valid-blocks", type=int, default=150)
    parser.add_argument("--block-s", type=float, default=0.4)
    parser.add_argument("--fund-credits", type=int, default=10**9)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency of each answer")
    try:
        asyncio.run(_serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass
