"""Who signs a platform transaction, and a participant's signing request.

The platform's keys (chain_ops.Keys) sign only the operator's commands (rates,
purchases, minting, grants, rewards) and pay every fee. A participant's command
(redeem, list, unlist, buy, retire, stake, unstake, propose, vote) names its participant
in the payload ("signer"), and its transaction carries that participant's own signature
on a memo that names the command: the chain itself shows who asked, and the platform
holds no participant's key. The signature comes one of two ways (engine.py):
  - run(..., wallet=W): the participant's own wallet, read by the participant's process
    for this command only (`gridbid rec buy ... --wallet me.json`);
  - run() without it plans the command (holding what it takes) and returns a signing
    REQUEST: the message, its signer, and until when it waits (REQUEST_S). The
    participant signs the message where its key lives (`gridbid wallet sign`), and
    submit() checks that signature, adds the platform's, journals and sends. A request
    left unsigned past its time fails and releases what it held: nothing was sent.
A participant's transaction that expires unlanded is signed again only while its wallet
is at hand (the process that ran it); otherwise the command fails (provably nothing
moved) and the participant runs it again under a new id.

Why a minute: the message carries a recent blockhash, and a cluster refuses it ~150
blocks (about a minute) later. LiteSVM's chains are one per process (each rebuilt from
the journals), so their heights say nothing across processes: the wait is wall time.
"""

import base64

from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from hub.integrations.platform.errors import PlatformError

REQUEST_S = 60.0  # how long a request waits for its signature


__all__ = ["Message", "REQUEST_S", "assemble", "check", "message", "request"]


def message(ixs, payer, blockhash):
    return Message.new_with_blockhash(ixs, payer, blockhash)


def assemble(message, keypairs, given):
    """The transaction of `message` signed by `keypairs` ({base58: Keypair}) and `given`
    signatures ({base58: Signature}); PlatformError names a signer missing."""
    data, signatures = bytes(message), []
    for key in message.account_keys[: message.header.num_required_signatures]:
        key = str(key)
        if key in given:
            signatures.append(given[key])
        elif key in keypairs:
            signatures.append(keypairs[key].sign_message(data))
        else:
            raise PlatformError("the transaction needs %s's signature" % key)
    return Transaction.populate(message, signatures)


def check(command, signer, raw, text):
    """`text` (base58) as `signer`'s signature of the request's message bytes `raw`.
    -> Signature; PlatformError if it is not one."""
    try:
        signature = Signature.from_string(text)
    except (TypeError, ValueError):
        raise PlatformError("%r is not a base58 signature" % (text,)) from None
    if not signature.verify(Pubkey.from_string(signer), raw):
        raise PlatformError("that is not %s's signature of command %r's transaction"
                            % (signer, command))  # fmt: skip
    return signature


def request(command, signer, raw, created_at):
    """A signing request (JSON-able): what `gridbid wallet sign` signs."""
    return {"command": command, "status": "awaiting signature", "signer": signer,
            "message": base64.b64encode(bytes(raw)).decode(),
            "expires_at": created_at + REQUEST_S}  # fmt: skip
