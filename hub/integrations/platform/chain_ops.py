"""Instructions and keys for the platform's chain operations.

Built on hub/integrations/settlement/transactions.py (memo, associated token accounts,
transfer_checked)
and spl.token's builders for what settlement never needed: creating a mint, minting,
burning, and dropping a mint's authority (a fixed supply). Every transaction is signed
by the platform authority as fee payer (it pays fees and new accounts' rent), plus each
token owner whose tokens move.

Keys (Keys): solana-keygen files, mode 0600 (hub/integrations/settlement/wallets.py), in one folder:
  platform-authority.json     fee payer; mint authority of the REC mints; escrow owner
  mint.json, mint-authority.json   the stable-credit mint (made by settlement's provision)
  rec-<vintage>.json          the mint of one vintage's certificates
  <account>.json or owners/<account>.json   a participant's wallet (aggregator-<k>,
                              owner-<device> as settlement names them, or any name)
The hub holds the participants' keys: one community, one Pi, custodial by design.
"""

import re
from pathlib import Path

from solders import system_program
from solders.pubkey import Pubkey
from solders.token.state import Mint
from spl.token import instructions as token_ix
from spl.token.models import (
    BurnCheckedParams,
    InitializeMint2Params,
    MintToCheckedParams,
    SetAuthorityParams,
)

from hub.integrations.platform.engine import PlatformError
from hub.integrations.settlement import wallets
from hub.integrations.settlement.transactions import (
    TOKEN_PROGRAM,
    ata,
    create_ata_ix,
    memo_ix,
    transfer_ix,
)

MINT_BYTES = 82
SOL = 10**9
RESERVED = ("platform-", "mint", "rec-", "nrg-", "nonce-")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class KeysError(PlatformError):
    pass


class Keys:
    """Named wallets in `folder`; with make=True (LiteSVM) a missing one is created."""

    def __init__(self, folder, make=False):
        self.folder, self.make = Path(folder), make
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cache = {}

    def wallet(self, name):
        if not NAME.match(name or ""):
            raise KeysError("%r is not an account name (letters, digits, _ . -)" % (name,))
        if name not in self._cache:
            path = self.folder / ("%s.json" % name)
            if not path.exists() and (self.folder / "owners" / path.name).exists():
                path = self.folder / "owners" / path.name
            try:
                self._cache[name] = wallets.read_or_create(path, self.make)
            except wallets.WalletError as exc:
                raise KeysError(str(exc)) from None
        return self._cache[name]

    def pubkey(self, name):
        return self.wallet(name).pubkey

    def account(self, name):
        """A participant's public key: the platform's own keys are not accounts."""
        if str(name).startswith(RESERVED):
            raise KeysError("%r is one of the platform's own keys, not an account" % (name,))
        return self.pubkey(name)

    @property
    def authority(self):
        return self.wallet("platform-authority")


def create_mint_ixs(payer, mint, authority, decimals, rent):
    return [
        system_program.create_account({
            "from_pubkey": payer, "to_pubkey": mint, "lamports": rent,
            "space": MINT_BYTES, "owner": TOKEN_PROGRAM}),
        token_ix.initialize_mint2(InitializeMint2Params(
            decimals=decimals, program_id=TOKEN_PROGRAM, mint=mint,
            mint_authority=authority, freeze_authority=None)),
    ]  # fmt: skip


def mint_to_ixs(payer, mint, authority, owner, amount, decimals):
    return [
        create_ata_ix(payer, owner, mint),
        token_ix.mint_to_checked(MintToCheckedParams(
            program_id=TOKEN_PROGRAM, mint=mint, dest=ata(owner, mint),
            mint_authority=authority, amount=amount, decimals=decimals)),
    ]  # fmt: skip


def burn_ix(mint, owner, amount, decimals):
    return token_ix.burn_checked(BurnCheckedParams(
        program_id=TOKEN_PROGRAM, mint=mint, account=ata(owner, mint), owner=owner,
        amount=amount, decimals=decimals))  # fmt: skip


def transfer_ixs(payer, source_owner, dest_owner, mint, amount, decimals):
    """Move tokens between two owners' associated accounts (the destination made if
    missing; the source owner signs)."""
    return [create_ata_ix(payer, dest_owner, mint),
            transfer_ix(source_owner, dest_owner, mint, amount, decimals)]  # fmt: skip


def drop_mint_authority_ix(mint, authority):
    """No one can mint again: the supply is fixed for good (checked on chain)."""
    return token_ix.set_authority(SetAuthorityParams(
        program_id=TOKEN_PROGRAM, account=mint, authority=token_ix.AuthorityType.MINT_TOKENS,
        current_authority=authority, new_authority=None))  # fmt: skip


def memo(text, signer):
    return memo_ix(text, signer)


def mint_info(data):
    """(supply, decimals, mint authority or None) of a mint account's data."""
    m = Mint.from_bytes(bytes(data))
    return m.supply, m.decimals, m.mint_authority


def pk(text):
    return Pubkey.from_string(text)
