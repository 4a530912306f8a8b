"""One part of a batch as a signed Solana transaction.

    [advance nonce]            only with a durable nonce (it must come first)
    memo                       gridbid:<batch>:<sha256>:<k>/<n>, signed by the payer
    per owner, in order:
        create the owner's associated token account if it is missing (idempotent)
        transfer_checked amount from the payer's token account (mint and decimals checked)

A transaction is atomic: either every transfer of the part happens or none does. The
payer (the aggregator's wallet) signs and pays the fees and the new accounts' rent.

Instructions are built here from their documented layouts rather than through
spl.token's helpers, which derive the associated token address (a PDA search) on every
call: that search was ~2/3 of the time to build a transaction. Addresses are cached.
The programs themselves (SPL Token, Associated Token Account, Memo v2) check everything
at execution, and the tests run them for real on LiteSVM.
"""

import struct
from functools import lru_cache

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.system_program import advance_nonce_account
from solders.token.associated import get_associated_token_address
from solders.transaction import Transaction

TOKEN_PROGRAM = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
ATA_PROGRAM = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
PACKET_BYTES = 1232  # the most a transaction may take on the wire
NONCE_BYTES = 80  # a system nonce account: version u32, state u32, authority, nonce, fee
TRANSFER_CHECKED = 12  # spl-token instruction index


class TooLarge(ValueError):
    pass


@lru_cache(maxsize=100_000)
def ata(owner, mint):
    """The associated token account of `owner` for `mint` (both Pubkeys)."""
    return get_associated_token_address(owner, mint)


def memo_ix(text, signer):
    return Instruction(MEMO_PROGRAM, text.encode(), [AccountMeta(signer, True, False)])


def create_ata_ix(payer, owner, mint):
    return Instruction(
        ATA_PROGRAM,
        b"\x01",  # CreateIdempotent
        [
            AccountMeta(payer, True, True),
            AccountMeta(ata(owner, mint), False, True),
            AccountMeta(owner, False, False),
            AccountMeta(mint, False, False),
            AccountMeta(SYSTEM_PROGRAM, False, False),
            AccountMeta(TOKEN_PROGRAM, False, False),
        ],
    )


def transfer_ix(payer, owner, mint, amount, decimals):
    return Instruction(
        TOKEN_PROGRAM,
        struct.pack("<BQB", TRANSFER_CHECKED, amount, decimals),
        [
            AccountMeta(ata(payer, mint), False, True),
            AccountMeta(mint, False, False),
            AccountMeta(ata(owner, mint), False, True),
            AccountMeta(payer, True, False),
        ],
    )


def advance_nonce_ix(nonce_account, authority):
    return advance_nonce_account({"nonce_pubkey": nonce_account, "authorized_pubkey": authority})


def part_tx(wallet, mint, decimals, payments, memo, blockhash, nonce_account=None):
    """The signed transaction of one part: payments are (owner Pubkey, amount) pairs;
    blockhash is a recent blockhash, or the nonce account's nonce with nonce_account."""
    payer = wallet.pubkey
    ixs = [advance_nonce_ix(nonce_account, payer)] if nonce_account is not None else []
    ixs.append(memo_ix(memo, payer))
    for owner, value in payments:
        ixs.append(create_ata_ix(payer, owner, mint))
        ixs.append(transfer_ix(payer, owner, mint, value, decimals))
    tx = Transaction.new_signed_with_payer(ixs, payer, [wallet.keypair], blockhash)
    size = len(bytes(tx))
    if size > PACKET_BYTES:
        raise TooLarge("part of %d payments is %d bytes, over %d" % (len(payments), size,
                                                                      PACKET_BYTES))  # fmt: skip
    return tx


def nonce_value(data):
    """The nonce stored in a nonce account's data (None unless initialized)."""
    if data is None or len(data) < NONCE_BYTES:
        return None
    _version, state = struct.unpack_from("<II", data)
    return Hash(bytes(data[40:72])) if state == 1 else None


def nonce_of(tx):
    """(nonce account, nonce) of a durable-nonce transaction, else None."""
    ix = tx.uses_durable_nonce()
    if ix is None:
        return None
    return tx.message.account_keys[ix.accounts[0]], tx.message.recent_blockhash


def memos(tx):
    """The UTF-8 texts of a transaction's memo instructions."""
    keys = tx.message.account_keys
    out = []
    for ix in tx.message.instructions:
        if keys[ix.program_id_index] == MEMO_PROGRAM:
            out.append(bytes(ix.data).decode("utf-8", "replace"))
    return out
