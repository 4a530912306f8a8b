"""First start on the LiteSVM backend: an empty chain gets what a cluster already has.

- the stable-credit mint (stand-in for USDC): its keypair <wallets>/mint.json and its
  mint authority <wallets>/mint-authority.json, made once and kept, so the mint's address
  (and every token account derived from it) is the same at every start;
- each aggregator's wallet (<wallets>/aggregator-<key_id>.json, made if missing) gets SOL
  for fees and rent, and `fund_credits` credits in its token account (once: when that
  account does not exist yet);
- with durable nonces, each aggregator's nonce account (<wallets>/nonce-<key_id>.json)
  with the aggregator as its authority, as recovery.py would make it: made here so that
  the journal's nonce transactions can be replayed (rebuild.py).

It runs at every start, before the journals are replayed onto the chain (rebuild.py).

Every key file is written 0600 (hub/integrations/settlement/wallets.py) and no key is ever printed.
Batteries' owners' keys are made on demand by wallets.Owners (make=...).
"""

from pathlib import Path

from solders import system_program
from solders.transaction import Transaction
from spl.token import instructions as token_ix
from spl.token.models import InitializeMint2Params, MintToCheckedParams

from hub.integrations.settlement import wallets
from hub.integrations.settlement.transactions import NONCE_BYTES, TOKEN_PROGRAM, ata

MINT_BYTES = 82
SOL = 10**9


def provision(chain, folder, payers, fund_credits, decimals, lamports=100 * SOL, nonces=None,
              faucet=()):  # fmt: skip
    """Set up `chain` for `payers` ({key_id: Wallet}) and their `nonces` ({key_id: nonce
    account Wallet} or None); fund the wallets the margin faucet funded before (`faucet`:
    [(Pubkey, base units)], hub/integrations/settlement/margin.py). -> the mint's Pubkey."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    mint = wallets.read_or_create(folder / "mint.json", True)
    authority = wallets.read_or_create(folder / "mint-authority.json", True)
    chain.airdrop(authority.pubkey, 10 * SOL)
    if chain.account_data(mint.pubkey) is None:
        rent = chain.svm.minimum_balance_for_rent_exemption(MINT_BYTES)
        _send(chain, authority, [mint], [
            system_program.create_account({
                "from_pubkey": authority.pubkey, "to_pubkey": mint.pubkey, "lamports": rent,
                "space": MINT_BYTES, "owner": TOKEN_PROGRAM}),
            token_ix.initialize_mint2(InitializeMint2Params(
                decimals=decimals, program_id=TOKEN_PROGRAM, mint=mint.pubkey,
                mint_authority=authority.pubkey, freeze_authority=None)),
        ])  # fmt: skip
    units = fund_credits * 10**decimals
    for wallet in payers.values():
        fund(chain, authority, mint, wallet.pubkey, units, decimals, lamports)
    for owner, given in faucet:
        fund(chain, authority, mint, owner, given, decimals, lamports)
    for key_id, nonce in (nonces or {}).items():
        wallet = payers[key_id]
        if chain.account_data(nonce.pubkey) is None:
            rent = chain.svm.minimum_balance_for_rent_exemption(NONCE_BYTES)
            ixs = system_program.create_nonce_account(
                wallet.pubkey, nonce.pubkey, wallet.pubkey, rent
            )
            _send(chain, wallet, [nonce], ixs)
    return mint.pubkey


def fund(chain, authority, mint, owner, units, decimals, lamports=100 * SOL):
    """`owner` (a Pubkey) gets SOL, its token account, and `units` of the mint in it, once:
    when that account does not exist yet (authority and mint: their Wallets, read once).
    -> the units minted now (0: it had its account)."""
    chain.airdrop(owner, lamports)
    account = ata(owner, mint.pubkey)
    if chain.account_data(account) is not None:
        return 0
    ixs = [token_ix.create_idempotent_associated_token_account(
        authority.pubkey, owner, mint.pubkey)]  # fmt: skip
    if units:
        ixs.append(token_ix.mint_to_checked(MintToCheckedParams(
            program_id=TOKEN_PROGRAM, mint=mint.pubkey, dest=account,
            mint_authority=authority.pubkey, amount=units, decimals=decimals)))  # fmt: skip
    _send(chain, authority, [], ixs)
    return units


def mint_wallets(folder):
    """(mint authority, mint): the Wallets provision() made in `folder`."""
    folder = Path(folder)
    return wallets.read(folder / "mint-authority.json"), wallets.read(folder / "mint.json")


def nonce_wallets(folder, key_ids):
    """{key_id: Wallet} of the aggregators' nonce accounts (<folder>/nonce-<k>.json, made
    if missing): the uploader signs on them, provision() makes them on LiteSVM."""
    return {k: wallets.read_or_create(Path(folder) / ("nonce-%d.json" % k), True) for k in key_ids}


def _send(chain, payer, signers, ixs):
    blockhash, _last = chain.latest_blockhash()
    tx = Transaction.new_signed_with_payer(
        ixs, payer.pubkey, [payer.keypair] + [s.keypair for s in signers], blockhash
    )
    _sig, err, _landed = chain.send(tx)
    if err is not None:
        raise RuntimeError("provisioning the LiteSVM chain failed: %s" % err)
