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


MEMO = "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"
TOKEN = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
ATA = "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL"
TRANSFER_CHECKED, BURN_CHECKED = 12, 15  # the token program's instruction tags


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


def describe(message, signer):
    """What `message` makes `signer` sign, a line per instruction: memos in full (control
    characters shown as '?'), every token movement with its amount, accounts and who
    authorises it, and in all what leaves the signer's accounts. ValueError for a
    message that is malformed, makes the signer pay its fees, or holds an instruction
    the platform never sends (only memos, token accounts made at the fee payer's cost,
    transfer_checked and burn_checked): the signer is never asked to sign blind."""
    keys = [str(k) for k in message.account_keys]
    required = message.header.num_required_signatures
    if not 1 <= required <= len(keys):
        raise ValueError("the message claims %d signers of %d keys" % (required, len(keys)))
    if signer not in keys[:required]:
        raise ValueError("%s is not one of the message's signers" % signer)
    if keys[0] == signer:
        raise ValueError("the request makes you pay its fees: the platform pays them")
    lines, out = ["fee payer: %s" % keys[0]], {}
    for ix in message.instructions:
        at = [ix.program_id_index, *bytes(ix.accounts)]
        if max(at) >= len(keys):
            raise ValueError("an instruction names account %d of %d" % (max(at), len(keys)))
        program, acc, data = (
            keys[ix.program_id_index],
            [keys[i] for i in ix.accounts],
            bytes(ix.data),
        )
        if program == MEMO:
            text = data.decode("utf-8", "replace")
            lines.append("memo: %s" % "".join(c if c.isprintable() else "?" for c in text))
        elif program == ATA and data in (b"", b"\x01") and len(acc) == 6 and acc[0] == keys[0]:
            lines.append("make %s's token account for mint %s (the fee payer pays)"
                         % (acc[2], acc[3]))  # fmt: skip
        elif program == TOKEN and data[:1] and data[0] in (TRANSFER_CHECKED, BURN_CHECKED):
            lines.append(_token(data, acc, signer, out))
        else:
            raise ValueError("the request holds an instruction the platform never sends "
                             "(program %s): not signed" % program)  # fmt: skip
    for mint, amount in sorted(out.items()):
        lines.append("in all, from your accounts: %d base units of mint %s" % (amount, mint))
    return lines


def _token(data, acc, signer, out):
    transfer = data[0] == TRANSFER_CHECKED
    if len(data) != 10 or len(acc) != (4 if transfer else 3):
        raise ValueError("a token instruction of an unexpected form: not signed")
    amount = int.from_bytes(data[1:9], "little")
    source, mint, owner = (acc[0], acc[1], acc[3]) if transfer else acc
    if owner == signer:
        out[mint] = out.get(mint, 0) + amount
    who = "YOU" if owner == signer else owner
    if transfer:
        return "move %d base units of mint %s from account %s to account %s, authorised by %s" % (
            amount, mint, source, acc[2], who)  # fmt: skip
    return "burn %d base units of mint %s from account %s, authorised by %s" % (
        amount, mint, source, who)  # fmt: skip
