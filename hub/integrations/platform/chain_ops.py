"""Instructions and keys for the platform's chain operations.

Built on hub/integrations/settlement/transactions.py (memo, associated token accounts,
transfer_checked)
and spl.token's builders for what settlement never needed: creating a mint, minting,
burning, and dropping a mint's authority (a fixed supply). Every transaction is signed
by the platform authority as fee payer (it pays fees and new accounts' rent), plus each
token owner whose tokens move.

Keys (Keys): the platform's OWN wallets, solana-keygen files, mode 0600
(hub/integrations/settlement/wallets.py), in one folder:
  platform-authority.json     fee payer; mint authority of the REC mints; escrow owner
  mint.json, mint-authority.json   the stable-credit mint (made by settlement's provision)
  rec-<vintage>.json          the mint of one vintage's certificates
  nrg-mint.json, nrg-stake.json    governance's mint and its stakes' escrow
and the participants' PUBLIC keys: an account is named by its base58 public key, or by a
name in the operator's address book <folder>/accounts.json ({"alice": "<base58>"}), or
as owner-<device> by settlement's owners.json (on LiteSVM a battery with no registered
owner gets a made-up one, as settlement's Owners does). The platform holds no
participant's secret: a participant signs its own commands (signing.py).
"""

import json
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
from transport import secret_files

MINT_BYTES = 82
SOL = 10**9
RESERVED = ("platform-", "mint", "rec-", "nrg-", "nonce-")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
OWNER = re.compile(r"^owner-[0-9]{1,9}$")


class KeysError(PlatformError):
    pass


class Keys:
    """The platform's own wallets in `folder` (with make=True, LiteSVM, a missing one is
    created) and the address book of participants' public keys."""

    def __init__(self, folder, make=False):
        self.folder, self.make = Path(folder), make
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cache = {}

    def wallet(self, name):
        """One of the platform's own keys (RESERVED names): never a participant's."""
        if not NAME.match(name or ""):
            raise KeysError("%r is not an account name (letters, digits, _ . -)" % (name,))
        if not name.startswith(RESERVED):
            raise KeysError("the platform holds no key of %r: a participant signs its own "
                            "commands" % name)  # fmt: skip
        if name not in self._cache:
            try:
                self._cache[name] = wallets.read_or_create(self.folder / (name + ".json"),
                                                           self.make)  # fmt: skip
            except wallets.WalletError as exc:
                raise KeysError(str(exc)) from None
        return self._cache[name]

    def pubkey(self, name):
        return self.wallet(name).pubkey

    def account(self, name):
        """A participant's public key, by base58, address-book name or owner-<device>."""
        name = str(name or "")
        if 32 <= len(name) <= 44:
            try:
                return Pubkey.from_string(name)
            except ValueError:
                pass
        if name.startswith(RESERVED):
            raise KeysError("%r is one of the platform's own keys, not an account" % (name,))
        if not NAME.match(name):
            raise KeysError("%r is not an account name (letters, digits, _ . -)" % (name,))
        key = self._book().get(name)
        if key is None and OWNER.match(name):
            owners = wallets.Owners(path=self.folder / "owners.json",
                                    make=self.folder / "owners" if self.make else None)  # fmt: skip
            key = owners.get(int(name[6:]))
        if key is None:
            raise KeysError("no account %r: give its public key, or add it to %s"
                            % (name, self.folder / "accounts.json"))  # fmt: skip
        return Pubkey.from_string(str(key))

    def add(self, name, key):
        """Name a participant's public key in the address book (the operator's)."""
        self.account(str(key))  # a public key, or KeysError
        if not NAME.match(name) or name.startswith(RESERVED):
            raise KeysError("%r cannot name an account" % (name,))
        book = self._book()
        book[name] = str(key)
        secret_files.write(self.folder / "accounts.json", book)  # a crash leaves old or new

    def _book(self):
        path = self.folder / "accounts.json"
        try:
            book = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise KeysError("cannot read %s: %s" % (path, exc)) from None
        if not isinstance(book, dict) or not all(isinstance(v, str) for v in book.values()):
            raise KeysError("%s must map names to base58 public keys" % path)
        return book

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
