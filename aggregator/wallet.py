"""The aggregator's own wallet, and the deposits it signs with it.

The wallet is a solana-keygen file (a JSON array of the keypair's 64 bytes), mode 0600
or refused: `gridbid aggregator new` makes one beside the identity, aggregator.toml
`wallet` names it. Only this process reads it; no market ever sees it, only signed
transactions. A deposit is one transfer_checked of the market's credit from this
wallet's token account to the market's clearing account, with the memo the market gave
(its welcome's "margin" terms); the market checks it before it sends it
(hub/integrations/settlement/margin.py, README "Settlement").
"""

import json
import os

from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from spl.token.instructions import get_associated_token_address, transfer_checked
from spl.token.models import TransferCheckedParams

from transport import secret_files

TOKEN_PROGRAM = Pubkey.from_string("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA")
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")


class WalletError(ValueError):
    pass


class Wallet:
    """A keypair that never shows its secret (repr: the public key)."""

    __slots__ = ("pubkey", "_keypair")

    def __init__(self, keypair):
        self._keypair, self.pubkey = keypair, keypair.pubkey()

    def __repr__(self):
        return "<Wallet %s>" % self.pubkey

    def deposit(self, terms, amount, blockhash):
        """The signed deposit of `amount` base units under the market's `terms`."""
        mint, clearing = Pubkey.from_string(terms["mint"]), Pubkey.from_string(terms["clearing"])
        memo = Instruction(MEMO_PROGRAM, terms["memo"].encode(),
                           [AccountMeta(self.pubkey, True, False)])  # fmt: skip
        move = transfer_checked(TransferCheckedParams(
            program_id=TOKEN_PROGRAM, source=get_associated_token_address(self.pubkey, mint),
            mint=mint, dest=get_associated_token_address(clearing, mint), owner=self.pubkey,
            amount=amount, decimals=terms["decimals"]))  # fmt: skip
        return Transaction.new_signed_with_payer(
            [memo, move], self.pubkey, [self._keypair], Hash.from_string(blockhash)
        )


def read(path):
    """The Wallet in a keypair file; WalletError unless it is mode 0600 and well formed
    (the rules of every secret file: transport/secret_files.py)."""
    try:
        data = secret_files.read(path, "wallet file", kind=None)
        return Wallet(Keypair.from_bytes(bytes(data)))
    except secret_files.SecretFileError as exc:
        raise WalletError(str(exc)) from None
    except (TypeError, ValueError):
        raise WalletError("%s is not a solana-keygen keypair file" % path) from None


def create(path):
    """A new keypair in a new 0600 file (an existing one is never replaced)."""
    keypair = Keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(list(bytes(keypair)), f)
    return Wallet(keypair)
