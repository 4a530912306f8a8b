// The hub's status page: loads its views from the REST API, then keeps them live
// from /ws. On a dropped or lost socket it reconnects and reloads every view, so a
// page that missed events is consistent again. Text only (textContent), never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const STATES = ["Created", "Received", "Confirmed", "Active", "TerminatedByAtn",
  "TerminatedByScada", "CompletedUnknownOutcome", "CompletedSuccess",
  "CompletedFailureByScada", "CompletedFailureByAtn"];
const page = { status: null, skew: 0, live: null, contractOffset: 0, slots: [], prices: [],
  platform: false, certOffset: 0 };

// --- formatting ----------------------------------------------------------------------
const num = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const cents = (v) => num(v, 2) + " c/kWh";
const pct = (v) => (v === null || v === undefined ? "–" : (v >= 0 ? "+" : "") + (100 * v).toFixed(1) + " %");
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const slotStart = (slot) => Number(String(slot).split(".").pop());
const ago = (t) => {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - page.skew - t);
  return s < 90 ? s.toFixed(0) + " s ago" : s < 5400 ? (s / 60).toFixed(0) + " min ago" : clock(t);
};

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else if (cell && typeof cell === "object") {
      td.textContent = cell.text;
      if (cell.id) td.id = cell.id;
      if (cell.cls) td.className = cell.cls;
    } else td.textContent = cell === null || cell === undefined ? "–" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}
function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

// --- views -------------------------------------------------------------------------------
async function loadStatus() {
  const s = await api("/api/status");
  page.status = s;
  page.skew = Date.now() / 1000 - s.now;
  $("hub-name").textContent = s.hub;
  document.title = "gridbid " + s.hub;
  $("open-slot").textContent = clock(slotStart(s.open_slot));
  $("signal").textContent = num(s.signal, 2);
  $("improvement").textContent = pct(s.totals.improvement);
  $("kwh").textContent = num(s.totals.kwh, 3) + " kWh";
  $("cleared-slots").textContent = s.totals.cleared_slots;
  $("device-count").textContent = s.devices;
  $("aggregator-count").textContent = s.aggregators;
  $("controls-mode").textContent = s.writable
    ? "Changes need the token from the hub's [web] token_file; they are recorded with by = web."
    : "Read-only: this hub has no [web] token_file.";
  $("control-form").hidden = !s.writable;
  diskWarning(s.disk);
  $("plot").hidden = !s.plot;
  if (s.plot && !$("plot-img").src) $("plot-img").src = "/plot";
  if (s.experiment && $("experiment").hidden) loadExperiment().catch(report);
}

// The store at 80 % of its budget (hub/disk.py): said at the top until it is not.
function diskWarning(d) {
  const over = d && d.share !== null && d.share !== undefined && d.share >= 0.8;
  $("disk-warning").hidden = !over;
  if (over) $("disk-warning").textContent = "The hub's store uses " + num(d.used_mb, 0) + " MB, "
    + Math.round(d.share * 100) + " % of its " + d.budget_mb + " MB budget (hub.disk_budget_mb).";
}

const pm = (mean, ci, d, scale) => (mean === null || mean === undefined ? "–"
  : (mean * (scale || 1)).toFixed(d) + (ci === null || ci === undefined ? "" : " ± " + (ci * (scale || 1)).toFixed(d)));
const gainCell = (g) => (g && g.revenue_pct !== null && g.revenue_pct !== undefined
  ? (g.revenue_pct >= 0 ? "+" : "") + pm(g.revenue_pct, g.revenue_pct_ci, 1) + " %" : "–");

async function loadCompetition() {
  const { items } = await api("/api/competition");
  fill("competition-live", items.map((r) => row([r.aggregators, r.slots, num(r.kwh, 3),
    cents(r.price), cents(r.reserve), pct(r.improvement)])));
}

async function loadExperiment() {
  const e = await api("/api/experiment");
  const p = e.parameters;
  $("experiment-about").textContent = p.market + " market, " + p.strategy + " bidders, " +
    p.values + " values; " + p.devices + " batteries × " + p.slots + " slots, " + p.repeats +
    " repeats, seed " + p.seed;
  const labels = { informed: "informed monopsonist", uninformed: "uninformed posted price",
    tariff: "feed-in tariff" };
  const rows = Object.entries(labels).filter(([k]) => e.baselines[k]).map(([k, label]) => {
    const b = e.baselines[k];
    return row([label, pm(b.mean_price, b.mean_price_ci, 2), num(b.kwh_sold, 1),
      pm(b.revenue_c, b.revenue_c_ci, 2, 0.01), "", ""]);
  });
  for (const r of e.runs) {
    rows.push(row(["N = " + r.aggregators, pm(r.mean_price, r.mean_price_ci, 2),
      num(r.kwh_sold, 1), pm(r.revenue_c, r.revenue_c_ci, 2, 0.01),
      gainCell(r.gain && r.gain.informed), gainCell(r.gain && r.gain["one aggregator"])]));
  }
  fill("experiment-table", rows);
  $("experiment").hidden = false;
}

async function loadSlots() {
  const { items } = await api("/api/slots?limit=30");
  page.slots = items;
  fill("slots", items.map((s) => row([
    clock(s.start), s.offers, num(s.offered_kwh, 3), num(s.reserve, 2), s.bid_layers, s.bidders,
    s.price === null ? (s.cleared_at ? "no trade" : "open") : num(s.price, 2),
    num(s.volume_kwh, 3), pct(s.improvement)], { "data-slot": s.slot })));
  const last = items.find((s) => s.price !== null);
  if (last) {
    $("last-price").textContent = cents(last.price);
    $("last-slot").textContent = "slot " + clock(last.start) + ", " + num(last.volume_kwh, 3) + " kWh";
  }
  drawChart();
  if (!page.live && items.length) showSlot(items[0].slot);
}

async function showSlot(slot) {
  const book = await api("/api/slots/" + encodeURIComponent(slot));
  page.live = { slot, offers: book.offers_list, bids: book.bids_list };
  renderLive();
  if (book.price !== null || book.cleared_at) setClearing(book.price, book.volume_kwh, book.reserve);
  else setClearing(undefined);
}

function renderLive() {
  const live = page.live;
  $("live-slot").textContent = live.slot;
  fill("live-offers", live.offers.map((o) => row([o.device, num(o.kwh, 3), num(o.reserve, 2), num(o.won_kwh, 3)])));
  fill("live-bids", live.bids.map((b) => row([b.aggregator, b.device, num(b.price, 2), num(b.kwh, 3),
    b.won_kwh === undefined ? "…" : num(b.won_kwh, 3)])));
  $("live-bid-count").textContent = live.bids.length;
}

function setClearing(price, volume, reserve) {
  const state = $("live-state");
  if (price === undefined) {
    state.textContent = "open";
    $("live-clearing").textContent = "waiting for the gate…";
  } else if (price === null) {
    state.textContent = "no trade";
    $("live-clearing").textContent = "no trade: no bid reached a reserve";
  } else {
    state.textContent = "cleared";
    const gain = reserve ? (price - reserve) / reserve : null;
    $("live-clearing").textContent = "cleared at " + cents(price) + " for " + num(volume, 3) +
      " kWh; mean reserve " + num(reserve, 2) + " (" + pct(gain) + ")";
  }
}

function drawChart() {
  const svg = $("price-chart");
  const slots = page.slots.filter((s) => s.reserve !== null).slice().reverse();
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (!slots.length) return;
  const values = slots.flatMap((s) => [s.reserve, s.price]).concat(page.prices.map((p) => p.price))
    .filter((v) => v !== null);
  const lo = Math.floor(Math.min(...values) - 1), hi = Math.ceil(Math.max(...values) + 1);
  const x = (i) => 40 + (slots.length > 1 ? (i * 550) / (slots.length - 1) : 275);
  const y = (v) => 185 - ((v - lo) * 170) / (hi - lo || 1);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
  };
  for (const v of [lo, (lo + hi) / 2, hi]) {
    add("line", { x1: 38, x2: 595, y1: y(v), y2: y(v), class: "grid" });
    add("text", { x: 2, y: y(v) + 4, class: "axis" }, v.toFixed(1));
  }
  const line = (key, cls) => {
    const pts = slots.map((s, i) => [i, s[key]]).filter(([, v]) => v !== null);
    if (pts.length) add("polyline", { points: pts.map(([i, v]) => x(i) + "," + y(v)).join(" "), class: cls });
    for (const [i, v] of pts) add("circle", { cx: x(i), cy: y(v), r: 3, class: cls });
  };
  const signal = new Map(page.prices.map((p) => [p.slot, p.price]));
  slots.forEach((s) => { s.signal = signal.has(s.slot) ? signal.get(s.slot) : null; });
  line("signal", "signal");
  line("reserve", "reserve");
  line("price", "price");
}

async function loadPrices() {
  page.prices = (await api("/api/prices?limit=60")).items;
  drawChart();
}

async function loadAggregators() {
  const { items } = await api("/api/aggregators");
  fill("aggregators", items.map((a) => row([
    a.name, a.strategy, a.bids, a.won, pct(a.win_rate).replace("+", ""), num(a.kwh, 3), num(a.money, 1),
    num(a.mean_price, 2),
    Object.entries(a.contracts).map(([k, n]) => k + " " + n).join(", ") || "–",
    a.reputation == null ? "–" : num(a.reputation, 2),
    a.margin ? num(a.margin.free, 2) + " free of " + num(a.margin.deposited, 2) : "–",
    a.margin ? a.margin.paid_contracts + " / " + num(a.margin.unpaid, 2) : "–",
    a.paused ? "paused" : "no"], { "data-aggregator": a.name })));
  controlNames(items.map((a) => "paused." + a.name), null);
}

function socBar(soc, id) {
  const wrap = document.createElement("span");
  wrap.className = "soc";
  const bar = document.createElement("span");
  bar.className = "bar";
  bar.style.width = Math.max(0, Math.min(100, soc || 0)) + "%";
  const text = document.createElement("span");
  text.id = id;
  text.textContent = soc === null || soc === undefined ? "–" : num(soc, 1) + " %";
  wrap.append(bar, text);
  return wrap;
}

async function loadDevices() {
  const { items } = await api("/api/devices");
  page.devices = items;
  fill("device-table", items.map((d) => row([
    d.id, d.address, socBar(d.soc, "soc-" + d.id), { text: num(d.voltage, 1) + " V", id: "volt-" + d.id },
    { text: num(d.power_kw, 2) + " kW", id: "power-" + d.id }, { text: health(d.health), id: "health-" + d.id },
    { text: d.failures ?? 0, id: "failures-" + d.id }, d.failed_contracts ?? 0,
    d.reputation === null || d.reputation === undefined ? "–" : num(100 * d.reputation, 0) + " %",
    num(d.sold_kwh, 3), num(d.earned, 1),
    { text: ago(Math.max(d.last_seen || 0, d.heard_at || 0)), id: "seen-" + d.id, cls: "seen" },
  ], { "data-device": d.id, "data-seen": Math.max(d.last_seen || 0, d.heard_at || 0) })));
  $("device-count").textContent = items.length;
  controlNames(null, items.map((d) => "reserve_floor." + d.id));
}
const health = (code) => (code === null || code === undefined ? "–" : code === 0 ? "good" : "code " + code);

function telemetry(ev) {
  const soc = $("soc-" + ev.device);
  if (!soc) return loadDevicesSoon();
  soc.textContent = num(ev.soc, 1) + " %";
  soc.previousSibling.style.width = Math.max(0, Math.min(100, ev.soc || 0)) + "%";
  $("volt-" + ev.device).textContent = num(ev.voltage, 1) + " V";
  $("power-" + ev.device).textContent = num(ev.power_kw, 2) + " kW";
  $("health-" + ev.device).textContent = health(ev.health);
  const seen = $("seen-" + ev.device);
  seen.parentNode.setAttribute("data-seen", ev.at);
  seen.textContent = ago(ev.at);
}

async function loadContracts() {
  const state = $("contract-state").value, device = $("contract-device").value;
  const q = new URLSearchParams({ limit: 25, offset: page.contractOffset });
  if (state) q.set("state", state);
  if (device) q.set("device", device);
  const { items, total } = await api("/api/contracts?" + q);
  $("contract-total").textContent = total;
  fill("contract-table", items.map((c) => row([
    c.id.slice(0, 8), clock(c.start), c.device, c.buyer_name, num(c.kwh, 3), num(c.price, 2), c.state,
  ], { "data-contract": c.id, class: "clickable" })));
}

async function contractHistory(tr) {
  const next = tr.nextSibling;
  if (next && next.classList.contains("history")) return next.remove();
  const c = await api("/api/contracts/" + encodeURIComponent(tr.getAttribute("data-contract")));
  const text = c.history.map((h) => clock(h.at) + " " + (h.from_state || "–") + " → " + h.to_state + " (" + h.by + ")").join("\n");
  const detail = row([{ text: c.id + " · slot " + c.slot + "\n" + text, cls: "pre" }], { class: "history" });
  detail.firstChild.colSpan = 7;
  tr.after(detail);
}

async function loadSettlements() {
  const { items } = await api("/api/settlements?limit=25");
  fill("settlement-table", items.map((s) => row([
    s.id, Array.isArray(s.trade_ids) ? s.trade_ids.length : s.trade_ids, s.status,
    { text: s.tx_signature || "–", cls: "mono wrap" }, clock(s.at)])));
}

async function loadControls() {
  const c = await api("/api/controls?limit=20");
  fill("control-history", c.history.map((h) => row([h.name, JSON.stringify(h.value), h.by, clock(h.at)])));
}

const names = { paused: [], floors: [] };
function controlNames(paused, floors) {
  if (paused) names.paused = paused;
  if (floors) names.floors = floors;
  const select = $("control-name"), chosen = select.value;
  select.replaceChildren(...names.paused.concat(names.floors).map((n) => new Option(n, n)));
  if (chosen) select.value = chosen;
}

async function setControl(event) {
  event.preventDefault();
  const raw = $("control-value").value.trim();
  let value = null;
  if (raw === "true" || raw === "false") value = raw === "true";
  else if (raw !== "") value = Number(raw);
  try {
    await api("/api/controls", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer " + $("control-token").value },
      body: JSON.stringify({ name: $("control-name").value, value }),
    });
    $("control-result").textContent = "set " + $("control-name").value + " = " + JSON.stringify(value);
  } catch (err) {
    $("control-result").textContent = "refused: " + err.message;
  }
}

// --- the platform (credit, certificates, governance, rewards): shown only when the
// store has its tables; polled every few seconds, as it changes without hub events.
const PAGE = 25;
const short = (key) => (key && key.length > 12 ? key.slice(0, 4) + "…" + key.slice(-4) : key);
const date = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

async function loadPlatform() {
  const p = await api("/api/platform");
  page.platform = p.enabled;
  $("platform").hidden = !p.enabled;
  $("platform-link").hidden = !p.enabled;
  if (!p.enabled) return;
  $("platform-pending").textContent = p.pending_commands + " pending";
  const credit = p.credit || {};
  $("platform-rate").textContent = credit.rate
    ? num(credit.rate.fiat_per_credit / 100, 2) + " " + credit.rate.currency : "no rate set";
  $("platform-supply").textContent = credit.supply_units ?? "–";
  const certs = p.certificates || { total: 0, by_status: {}, by_vintage: {} };
  $("platform-cert-count").textContent = certs.total;
  $("platform-cert-status").textContent = Object.entries(certs.by_status).map(([k, n]) => n + " " + k).join(", ") || "–";
  fill("platform-vintages", Object.entries(certs.by_vintage).reverse().map(([v, n]) =>
    row([v, n.held, n.listed, n.retired], { "data-vintage": v })));
  const nrg = p.nrg || {};
  $("platform-staked").textContent = nrg.staked ?? "–";
  $("platform-nrg-supply").textContent = nrg.supply ?? "–";
  const proposals = p.proposals || { open: 0, total: 0 };
  $("platform-open").textContent = proposals.open;
  $("platform-proposal-total").textContent = proposals.total;
  const last = p.rewards && p.rewards.last_epoch;
  $("platform-epoch").textContent = last ? date(last.epoch) : "–";
  $("platform-epoch-detail").textContent = last
    ? last.nrg + " NRG to " + last.accounts + " accounts, " + last.paid + "/" + last.rewards + " paid" : "no rewards yet";
  await Promise.all([loadCertificates(), loadProposals(), loadRewards()]);
}

async function loadCertificates() {
  const q = new URLSearchParams({ limit: PAGE, offset: page.certOffset });
  if ($("platform-cert-state").value) q.set("status", $("platform-cert-state").value);
  const { items, total } = await api("/api/platform/certificates?" + q);
  $("platform-cert-total").textContent = total;
  fill("platform-certificates", items.map((c) => row([
    c.serial, c.vintage, c.device, c.source, c.status, c.price ?? "–",
    { text: short(c.owner), cls: "mono" }, date(c.minted_at),
  ], { "data-serial": c.serial, "data-status": c.status })));
}

async function loadProposals() {
  const { items } = await api("/api/platform/proposals?limit=" + PAGE);
  fill("platform-proposals", items.map((p) => row([
    { text: p.title, cls: "mono" }, { text: p.status, cls: "status" }, p.tally.yes, p.tally.no, p.tally.votes,
    date(p.voting_ends), date(p.effective_at), { text: short(p.proposer), cls: "mono" },
  ], { "data-proposal": p.id, "data-status": p.status })));
}

async function loadRewards() {
  const { items } = await api("/api/platform/rewards?limit=" + PAGE);
  fill("platform-rewards", items.map((e) => row([
    date(e.epoch), e.accounts, e.nrg, e.by_rule.conservation ?? 0, e.by_rule.demand_response ?? 0,
    e.by_rule.liquidity ?? 0, e.paid_nrg + " / " + e.nrg,
  ], { "data-epoch": e.epoch })));
}

// --- live events ---------------------------------------------------------------------------
const loadSlotsSoon = debounce(() => loadSlots().catch(report), 300);
const loadDevicesSoon = debounce(() => loadDevices().catch(report), 500);
const loadContractsSoon = debounce(() => Promise.all([loadContracts(), loadAggregators(), loadStatus()]).catch(report), 500);
const loadPlatformSoon = debounce(() => loadPlatform().catch(report), 1000);

function onEvent(ev) {
  logEvent(ev);
  const live = page.live;
  if ((ev.kind === "offer" || ev.kind === "bid") && (!live || live.slot !== ev.slot)) {
    page.live = { slot: ev.slot, offers: [], bids: [] };
    setClearing(undefined);
  }
  switch (ev.kind) {
    case "offer":
      page.live.offers.push({ device: ev.device, kwh: ev.kwh, reserve: ev.reserve, won_kwh: null });
      renderLive(); loadSlotsSoon(); break;
    case "bid":
      page.live.bids.push({ aggregator: ev.aggregator, device: ev.device, price: ev.price, kwh: ev.kwh });
      renderLive(); loadSlotsSoon(); break;
    case "price":
      $("signal").textContent = num(ev.price, 2); loadPrices().catch(report); break;
    case "clearing":
      if (live && live.slot === ev.slot) showSlot(ev.slot).catch(report);
      else setClearing(ev.price, ev.volume_kwh, ev.reserve);
      loadSlots().catch(report); loadCompetition().catch(report); loadContractsSoon(); break;
    case "telemetry": telemetry(ev); break;
    case "device": case "failure": loadDevicesSoon(); loadStatus().catch(report); break;
    case "contract": loadContractsSoon(); loadPlatformSoon(); break;
    case "settlement": loadSettlements().catch(report); loadPlatformSoon(); break;
    case "disk": diskWarning(ev); break;
    case "control": loadControls().catch(report); loadAggregators().catch(report); loadDevicesSoon(); loadPlatformSoon(); break;
  }
  if (String(ev.kind).startsWith("platform")) loadPlatformSoon();
}

function logEvent(ev) {
  if (ev.kind === "telemetry") return; // every second per battery: shown in the table instead
  const li = document.createElement("li");
  const { id, kind, at, ...rest } = ev;
  li.textContent = clock(at) + " " + kind + " " + JSON.stringify(rest);
  const log = $("event-log");
  log.prepend(li);
  while (log.children.length > 40) log.lastChild.remove();
}

let retry = 1000, opened = false;
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.onopen = () => {
    retry = 1000;
    $("conn").textContent = "live"; $("conn").className = "conn on";
    if (opened) loadAll(); // a reconnect: reload whatever happened while we were away
    opened = true;
  };
  ws.onmessage = (m) => { const ev = JSON.parse(m.data); if (ev.kind !== "hello") onEvent(ev); };
  ws.onclose = (e) => {
    $("conn").textContent = e.code === 1013 ? "too slow, reconnecting…" : "reconnecting…";
    $("conn").className = "conn off";
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 15000);
  };
}

function report(err) { console.error(err); }

function loadAll() {
  return Promise.all([loadStatus(), loadSlots(), loadPrices(), loadAggregators(), loadDevices(),
    loadContracts(), loadSettlements(), loadControls(), loadPlatform(),
    loadCompetition()]).catch(report);
}

function tick() {
  const s = page.status;
  if (s) {
    const now = Date.now() / 1000 - page.skew;
    const start = slotStart(s.open_slot);
    const left = start - s.gate_s - now;
    if (left < 0) { loadStatus().catch(report); } else $("gate-in").textContent = left.toFixed(0) + " s";
  }
  for (const el of document.querySelectorAll("#device-table tbody tr")) {
    const seen = el.querySelector(".seen");
    if (seen) seen.textContent = ago(Number(el.getAttribute("data-seen")));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("contract-state").append(...STATES.map((s) => new Option(s, s)));
  $("contract-filter").addEventListener("submit", (e) => { e.preventDefault(); page.contractOffset = 0; loadContracts().catch(report); });
  $("contract-prev").addEventListener("click", () => { page.contractOffset = Math.max(0, page.contractOffset - 25); loadContracts().catch(report); });
  $("contract-next").addEventListener("click", () => { page.contractOffset += 25; loadContracts().catch(report); });
  $("contract-table").addEventListener("click", (e) => { const tr = e.target.closest("tr[data-contract]"); if (tr) contractHistory(tr).catch(report); });
  $("slots").addEventListener("click", (e) => { const tr = e.target.closest("tr[data-slot]"); if (tr) showSlot(tr.getAttribute("data-slot")).catch(report); });
  $("control-form").addEventListener("submit", setControl);
  $("platform-cert-filter").addEventListener("submit", (e) => { e.preventDefault(); page.certOffset = 0; loadCertificates().catch(report); });
  $("platform-cert-prev").addEventListener("click", () => { page.certOffset = Math.max(0, page.certOffset - PAGE); loadCertificates().catch(report); });
  $("platform-cert-next").addEventListener("click", () => { page.certOffset += PAGE; loadCertificates().catch(report); });
  loadAll();
  connect();
  setInterval(tick, 1000);
  // Every 5 s while the platform is shown; every 30 s a look for one that appeared.
  let polls = 0;
  setInterval(() => { if (page.platform || ++polls % 6 === 0) loadPlatform().catch(report); }, 5000);
});
