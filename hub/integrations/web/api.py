"""The status page's HTTP side: the page and its assets, /ws, and the REST API
(schema at /openapi.json; the interactive /docs is off, as it loads from a CDN).

Lists are pages: {"items": [...], "limit", "offset"} (and "total" where counting is
cheap), newest first; `limit` is 1..max_page. A bad parameter is a 422 whose
"error" names it in one line. Every handler is async and runs on the hub's loop:
reads of hub state (registry, agents, controls) are direct, reads of the store go
through the read-only Reader thread, and the one write (POST /api/controls) calls
hub.set_control on the loop, as every store write of the hub is made.

The platform's views (/api/platform...) read its tables in the same store
(hub/integrations/platform/views.py), never the chain or its wallets; {"enabled": false}
without them.

Nothing secret is read here: aggregators are shown from a whitelist of their
settings, never hub.cfg whole (it holds the keyring), and the token is only compared.
"""

import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.controls import floor_name
from hub.integrations.platform import views as platform
from hub.integrations.settlement import journal
from hub.integrations.web import evidence
from hub.integrations.web.guards import Bodies
from hub.store import views as queries
from protocol.contract import STATE_NAMES, parse_slot_name

STATIC = Path(__file__).parent / "static"
PLATFORM_TTL_S = 2.0  # how stale a platform view may be (the page polls every 5 s)
SHOWN_AGGREGATOR = ("name", "key_id", "strategy", "value", "spread", "margin", "bidders", "price",
                    "budget", "capacity", "max_kw")  # fmt: skip
# An aggregator that never bid.
EMPTY = dict(bids=0, won=0, slots=0, kwh=0.0, money=0.0, mean_bid=None, win_rate=None,
             mean_price=None)  # fmt: skip
# Same-origin only; no inline script or style, so injected markup cannot run.
HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip


def _margins(settlement, key_ids):
    """{aggregator id: its margin account in credits (Margin.in_credits: with
    "paid_contracts" and "unpaid")}; {} when the hub does not settle. From the margin's
    running totals (the bid path's read), in the hub's loop: a few indexed reads."""
    if settlement is None or settlement.margin is None:
        return {}
    margin = settlement.margin
    return {k: margin.in_credits(a) for k, a in margin.accounts(key_ids).items()}


def _standing(reputations, key_id):
    """An aggregator's reputation in this market (None: no fill yet)."""
    found = reputations.get(key_id)
    return None if found is None else round(found["reputation"], 4)


def _slot(value):
    parse_slot_name(value)  # ValueError naming the grammar -> 422
    return value


Slot = Annotated[str, AfterValidator(_slot)]
DeviceId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="ETP device id")]
Offset = Annotated[int, Query(ge=0, le=10**9)]
State = Literal[STATE_NAMES]
CertificateStatus = Literal[platform.CERTIFICATE_STATUSES]
ProposalStatus = Literal[platform.PROPOSAL_STATUSES]


class ControlIn(BaseModel):
    """hub.set_control(name, value): reserve_floor.<device id> (c/kWh, 0..1000, null
    clears) or paused.<aggregator name> (true/false, null clears)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, examples=["paused.agg1"])
    value: StrictBool | StrictInt | StrictFloat | None = None


def make_app(web):
    hub, reader, limit_max = web.hub, web.reader, web.settings["max_page"]
    Limit = Annotated[int, Query(ge=1, le=limit_max, description="page size")]
    app = FastAPI(
        title="gridbid hub %s" % hub.cfg["name"], docs_url=None, redoc_url=None,
        description="Status and history of a gridbid hub: slots, bids, clearings, contracts, "
        "devices, settlements. Live events: WebSocket /ws.",
    )  # fmt: skip
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(Bodies, web=web)  # outermost: before any body is read
    _errors(app)
    bearer = HTTPBearer(auto_error=False, description="the token in [web] token_file")

    def names():
        return hub.aggregators()

    def page(items, limit, offset, **more):
        return {"items": items, "limit": limit, "offset": offset, **more}

    recent = {}

    async def polled(fn, *args):
        """The platform's views: every open page polls them (nothing tells it they
        changed), so one answer serves all pages for PLATFORM_TTL_S, whatever their number."""
        now, key = time.monotonic(), (fn, args)
        if key in recent and now - recent[key][0] < PLATFORM_TTL_S:
            return recent[key][1]
        value = await reader(fn, *args)
        if len(recent) >= 256:  # every filter and page seen: bounded
            recent.clear()
        recent[key] = (now, value)
        return value

    # --- the page -------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/plot", include_in_schema=False)
    async def plot():
        path = web.settings["experiment_plot"]
        if not path or not Path(path).is_file():
            raise HTTPException(404, "no experiment plot (set [web] experiment_plot and run "
                                "`gridbid experiment --plot FILE`)")  # fmt: skip
        return FileResponse(path, headers={"cache-control": "no-cache"})

    @app.websocket("/ws")
    async def events(websocket: WebSocket):
        # A page elsewhere must not read this hub's events through its visitor's browser:
        # a browser names the page's origin, which must be this page's own (tools send none).
        origin = websocket.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != websocket.headers.get("host"):
            await websocket.close(code=1008)  # before accepting: the handshake gets a 403
            return
        await web.fanout.serve(websocket)

    # --- now --------------------------------------------------------------------------

    @app.get("/api/status", tags=["now"])
    async def status():
        """The hub now: its market, the open slot, totals, the page's own state."""
        now = time.time()
        plot, found = web.settings["experiment_plot"], web.settings["experiment_json"]
        return {
            "hub": hub.cfg["name"], "now": now, "slot_s": hub.grid.length(now),
            "slot_grid": hub.grid.value,
            "gate_s": hub.cfg["gate_s"], "open_slot": hub.market.open_slot(int(now)),
            "signal": hub.signal, "devices": len(hub.registry.devices),
            "aggregators": len(hub.aggregators()), "totals": await web.cache(queries.totals),
            "controls": hub.controls.values, "writable": web.token is not None,
            "disk": hub.disk.status(),
            "plot": bool(plot and Path(plot).is_file()),
            "experiment": bool(found and Path(found).is_file()),
            "ws": {"clients": len(web.fanout.clients), "dropped": web.fanout.dropped,
                   "queue": web.fanout.queue_size, "events": web.fanout.sent},
        }  # fmt: skip

    # --- auctions ---------------------------------------------------------------------

    @app.get("/api/slots", tags=["auctions"])
    async def slots(limit: Limit = 20, offset: Offset = 0):
        """Slots, newest first: offers, bid layers, reserve, clearing price, improvement."""
        return page(await reader(queries.slots, limit, offset), limit, offset)

    @app.get("/api/slots/{slot}", tags=["auctions"])
    async def slot(slot: Annotated[Slot, PathParam()]):
        """One slot's auction in arrival order: asks at reserve, each bid layer (with
        what it won), the clearing and the contracts it made."""
        found = await reader(queries.slot_book, slot, names())
        if found is None:
            raise HTTPException(404, "no slot %s in the store" % slot)
        return found

    @app.get("/api/trades", tags=["auctions"])
    async def trades(slot: Annotated[Slot | None, Query()] = None, limit: Limit = 100,
                     offset: Offset = 0):  # fmt: skip
        """Fills, newest first (the market maker is every fill's counterparty)."""
        return page(await reader(queries.trades, names(), slot, limit, offset), limit, offset)

    @app.get("/api/prices", tags=["auctions"])
    async def prices(limit: Limit = 100):
        """Price signals (c/kWh) with the demand and supply behind them, newest first."""
        return page(await reader(queries.prices, limit), limit, 0)

    @app.get("/api/stats", tags=["auctions"])
    async def stats(limit: Limit = 100):
        """Per slot traded kWh and prices (store.stats), and totals with the improvement."""
        found = await reader(lambda store: store.stats(limit))
        return dict(found, totals=await web.cache(queries.totals))

    @app.get("/api/aggregators", tags=["competition"])
    async def aggregators():
        """Each aggregator: its strategy, bid layers, win rate (share of its layers that
        won kWh), kWh and money (cents) bought, contracts by state, paused or not."""
        found = dict(await web.cache(queries.aggregators))
        contracts = await reader(queries.contracts_by_buyer)
        standing = await reader(queries.aggregator_reputation)
        margins = _margins(hub.integrations.get("settlement"), set(hub.aggregators()) | set(found))
        rows = []
        for cfg in hub.cfg["aggregators"]:
            row = {k: cfg.get(k) for k in SHOWN_AGGREGATOR}
            row["paused"] = hub.controls.paused(cfg["name"])
            stat = {k: v for k, v in found.pop(cfg["key_id"], EMPTY).items() if k != "key_id"}
            rows.append(dict(row, **stat, contracts=contracts.get(cfg["key_id"], {}),
                             reputation=_standing(standing, cfg["key_id"]),
                             margin=margins.get(cfg["key_id"])))  # fmt: skip
        names = hub.aggregators()  # independent ones keep their strategy to themselves
        for key_id in set(found) | (set(names) - {a["key_id"] for a in hub.cfg["aggregators"]}):
            stat = {k: v for k, v in found.get(key_id, EMPTY).items() if k != "key_id"}
            name = names.get(key_id, str(key_id))
            rows.append(dict(stat, name=name, key_id=key_id, strategy=None,
                             paused=hub.controls.paused(name),
                             contracts=contracts.get(key_id, {}),
                             reputation=_standing(standing, key_id),
                             margin=margins.get(key_id)))  # fmt: skip
        return {"items": rows}

    # --- devices ------------------------------------------------------------------------

    @app.get("/api/devices", tags=["devices"])
    async def devices():
        """Every battery: last status (SoC %, V, kW, health), last seen, reputation, what
        it sold; live: its address, DeviceFailure reports since the hub started, offer."""
        rows = {r["id"]: r for r in await reader(queries.devices)}
        for device_id, info in list(hub.registry.devices.items()):
            row = rows.setdefault(device_id, {"id": device_id})
            row.update(
                address=info.address, failures=info.failures, capacity_kwh=info.capacity_kwh,
                heard_at=info.last_seen_ms / 1000 if info.last_seen_ms else None,
                offer_kwh=info.offer_kwh, reserve=info.reserve, max_kw=info.max_kw,
                reserve_floor=hub.controls.get(floor_name(device_id)),
            )  # fmt: skip
        return {"items": [rows[k] for k in sorted(rows)]}

    @app.get("/api/telemetry/{device}", tags=["devices"])
    async def telemetry(device: DeviceId, limit: Limit = 100):
        """A battery's readings, newest first."""
        return page(await reader(queries.telemetry, device, limit), limit, 0, device=device)

    # --- contracts and settlements --------------------------------------------------------

    @app.get("/api/contracts", tags=["contracts"])
    async def contracts(
        state: Annotated[State | None, Query()] = None,
        device: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
        buyer: Annotated[int | None, Query(ge=0, le=2**32 - 1, description="key id")] = None,
        slot: Annotated[Slot | None, Query()] = None,
        limit: Limit = 100, offset: Offset = 0,
    ):  # fmt: skip
        """Contracts, newest slot first, filtered by state, device, buyer or slot."""
        total, rows = await reader(queries.contracts, names(), state, device, buyer, slot,
                                   limit, offset)  # fmt: skip
        return page(rows, limit, offset, total=total)

    @app.get("/api/contracts/{contract_id}", tags=["contracts"])
    async def contract(contract_id: Annotated[str, PathParam(max_length=64)]):
        """One contract, its MarketContract JSON and every state it went through."""
        found = await reader(queries.contract, contract_id, names())
        if found is None:
            raise HTTPException(404, "no contract %s" % contract_id)
        return found

    @app.get("/api/settlements", tags=["contracts"])
    async def settlements(status: Annotated[str | None, Query(max_length=64)] = None,
                          limit: Limit = 100, offset: Offset = 0):  # fmt: skip
        """Settlement batches (trade ids, chain transaction signature, status), newest first."""
        return page(await reader(journal.settlements, status, limit, offset), limit, offset)

    @app.get("/api/settlements/{batch}", tags=["contracts"])
    async def settlement(batch: Annotated[str, PathParam(max_length=200)]):
        """One batch: its canonical records and its parts (transactions, signatures)."""
        found = await reader(journal.settlement, batch)
        if found is None:
            raise HTTPException(404, "no settlement batch %s" % batch)
        return found

    # --- the platform (hub/integrations/platform: credit, certificates, governance, rewards)

    @app.get("/api/platform", tags=["platform"])
    async def platform_summary():
        """The platform at a glance: credit rate and supply, certificates by status and
        vintage, NRG and open proposals, the last reward epoch. {"enabled": false} when
        the store has no platform tables (no [platform] ever ran)."""
        return await polled(platform.summary)

    @app.get("/api/platform/certificates", tags=["platform"])
    async def platform_certificates(
        status: Annotated[CertificateStatus | None, Query()] = None,
        vintage: Annotated[int | None, Query(ge=1970, le=9999)] = None,
        limit: Limit = 100, offset: Offset = 0,
    ):  # fmt: skip
        """Renewable energy certificates, newest serial first: vintage, battery, source,
        owner (public key), status (held, listed, retired) and listing price."""
        on, total, rows = await polled(platform.certificates, status, vintage, limit, offset)
        return page(rows, limit, offset, total=total, enabled=on)

    @app.get("/api/platform/proposals", tags=["platform"])
    async def platform_proposals(status: Annotated[ProposalStatus | None, Query()] = None,
                                 limit: Limit = 100, offset: Offset = 0):  # fmt: skip
        """Governance proposals, newest first, with their vote tally (staked NRG)."""
        on, total, rows = await polled(platform.proposals, status, limit, offset)
        return page(rows, limit, offset, total=total, enabled=on)

    @app.get("/api/platform/rewards", tags=["platform"])
    async def platform_rewards(
        epoch: Annotated[int | None, Query(ge=0, le=2**53, description="epoch start")] = None,
        limit: Limit = 100, offset: Offset = 0,
    ):  # fmt: skip
        """Incentive rewards per epoch, newest first (NRG per rule, paid or not); with
        `epoch`, also that epoch's rewards per account and rule."""
        on, total, epochs, rows = await polled(platform.rewards, epoch, limit, offset)
        return page(epochs, limit, offset, total=total, enabled=on, rewards=rows)

    # --- controls ------------------------------------------------------------------------

    @app.get("/api/controls", tags=["controls"])
    async def controls(limit: Limit = 50):
        """Operators' settings in force, and their history (who, when), newest first."""
        history = await reader(queries.control_history, limit)
        return {
            "controls": hub.controls.values,
            "history": history,
            "writable": web.token is not None,
        }

    # The token is checked by guards.Bodies, before the body is read; `bearer` here only
    # declares the scheme in /openapi.json.
    @app.post("/api/controls", tags=["controls"], dependencies=[Depends(bearer)],
              responses={400: {"description": "a bad control (the hub's message)"},
                         401: {"description": "no token, or a wrong one"},
                         403: {"description": "the page is read-only"}})  # fmt: skip
    async def set_control(control: ControlIn):
        """Set an operator's setting (value null clears it); recorded with by = "web"."""
        try:
            hub.set_control(control.name, control.value, by="web")
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"name": control.name, "value": control.value, "controls": hub.controls.values}

    evidence.add_routes(app, web)
    return app


def _errors(app):
    """Every error as {"error": one line, "detail": ...}."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        lines = ["%s: %s" % (".".join(str(p) for p in e["loc"][1:]) or e["loc"][0], e["msg"])
                 for e in errors]  # fmt: skip
        detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return JSONResponse({"error": "; ".join(lines), "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail, "detail": exc.detail},
                            status_code=exc.status_code, headers=exc.headers)  # fmt: skip


class _SecurityHeaders:
    """Pure ASGI (a BaseHTTPMiddleware would buffer responses and skip nothing for /ws)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    headers.append(name.decode(), value.decode())
                if scope["path"].startswith("/api/"):
                    headers.append("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
