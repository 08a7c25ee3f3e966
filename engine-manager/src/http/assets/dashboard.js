// The engine's live dashboard: a snapshot from /api/strategies (+ /api/history for
// the sparklines), then live updates from /api/events (server-sent events relayed
// from Redis). Rows are created once and updated in place. Redraws are batched (at
// most one pass every REDRAW_MS, only for rows that changed) and skip rows that are
// off screen (drawn when they scroll into view), so a table of hundreds of
// strategies stays cheap. Commands go to the command API and the row shows their
// outcome. For the person on duty: the kill switch (global pause, resume and stop,
// each confirmed in a dialog), a config edited in the detail panel and checked by
// the strategy itself before the update is sent, the log's last lines and the
// history there, and an alarm (banner, page title, notification) while a strategy
// is in error, in backoff or stale.
"use strict";

(function () {
  const REDRAW_MS = 500;
  const WINDOW_MS = 10 * 60 * 1000; // sparkline window
  const MIN_SPAN_MS = 60 * 1000; // narrowest x axis of a sparkline
  const REFRESH_MS = 30 * 1000; // full snapshot, as a safety net under the stream
  const POLL_MS = 300;
  const POLL_LIMIT_MS = 10 * 60 * 1000;
  const STATUSES = ["running", "paused", "starting", "stopping", "backoff", "error", "stopped"];
  const LIVE = new Set(["running", "paused"]);
  const ACTIONS = ["start", "stop", "restart", "pause", "resume"];
  const ENABLED = {
    start: (s) => !LIVE.has(s) && s !== "starting",
    stop: (s) => s !== "stopped",
    restart: (s) => s !== "starting" && s !== "stopping",
    pause: (s) => s === "running",
    resume: (s) => s === "paused",
  };
  const TITLE = document.title;
  const LOG_LINES = 200;
  const GLOBAL_WORDS = {
    stop: "Stop every running or paused strategy? Their executors exit; nothing restarts them until each is started again.",
    pause: "Pause every running strategy? They keep their positions and stop trading until resumed.",
    resume: "Resume every paused strategy?",
  };

  const $ = (id) => document.getElementById(id);

  // ---------- the bearer token ----------
  // Kept for this tab only (sessionStorage, never localStorage), sent as
  // `Authorization: Bearer` on every request, and as `?access_token=` on the event
  // streams (EventSource cannot set a header; the server takes it there only). A read
  // answered 401 asks for it in a small form.
  const TOKEN_KEY = "engine.token";
  localStorage.removeItem(TOKEN_KEY); // earlier dashboards kept it for good
  function token() {
    return (sessionStorage.getItem(TOKEN_KEY) || "").trim();
  }
  function setToken(value) {
    value = value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = value;
  }
  function streamUrl(path) {
    return token() ? path + "?access_token=" + encodeURIComponent(token()) : path;
  }
  // Every request of this page goes through here (it shadows window.fetch).
  const browserFetch = window.fetch.bind(window);
  async function fetch(url, options) {
    options = options || {};
    const headers = new Headers(options.headers || {});
    if (token()) headers.set("Authorization", "Bearer " + token());
    const r = await browserFetch(url, Object.assign({}, options, { headers }));
    if (r.status === 401 && (options.method || "GET") === "GET") {
      const answer = await r.clone().json().catch(() => ({}));
      askForToken(answer.error || "this server requires a bearer token to read");
    }
    return r;
  }
  function askForToken(why) {
    const dialog = $("token-dialog");
    if (dialog.open) return;
    setText($("token-why"), why + ": enter a read or operate token.");
    $("token-ask").value = "";
    dialog.showModal();
    $("token-ask").focus();
  }
  const tbody = $("rows");
  const byId = new Map(); // strategy id -> row model
  const byTr = new WeakMap(); // <tr> -> row model
  // Rows within a screen of the viewport are "visible"; the others are drawn when
  // they come near it.
  const onScreen = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const row = byTr.get(entry.target);
      if (!row) continue;
      row.visible = entry.isIntersecting;
      if (row.visible && row.behind) markDirty(row);
    }
  }, { rootMargin: "100% 0px" });
  let dirty = new Set();
  let redrawTimer = null;
  let healthIntervalMs = 2000;
  let sortKey = "name";
  let snapshotTimer = null;
  let engine = null;
  // This manager is a cluster node: each strategy's `node` is its owner.
  let CLUSTER = false;

  // ---------- formatting ----------
  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toFixed(digits);
  }
  function fmtMoney(v) {
    if (v === null || v === undefined) return "–";
    const sign = v > 0 ? "+" : "";
    return sign + Number(v).toFixed(2);
  }
  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }
  // A point in time as everything else shows it (enginectl, logs, psql): 24-hour UTC
  // with the date, "2026-11-21 01:55:08.472 UTC", whatever the browser's locale.
  function fmtUtc(v) {
    if (v === null || v === undefined || v === "") return "";
    const d = new Date(v);
    if (Number.isNaN(d.getTime())) return String(v);
    return d.toISOString().replace("T", " ").replace("Z", " UTC");
  }
  function fmtAge(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return Math.round(ms) + "ms";
    return fmtDuration(ms / 1000);
  }
  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }
  function setClass(el, cls, on) {
    if (el.classList.contains(cls) !== on) el.classList.toggle(cls, on);
  }

  // ---------- row model ----------
  function svgSpark(cls) {
    const wrap = document.createElement("div");
    wrap.className = "metric " + cls;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 24");
    svg.setAttribute("preserveAspectRatio", "none");
    const line = document.createElementNS(ns, "polyline");
    svg.appendChild(line);
    const val = document.createElement("span");
    val.className = "val";
    wrap.append(svg, val);
    return { wrap, line, val };
  }

  function td(cls) {
    const c = document.createElement("td");
    if (cls) c.className = cls;
    return c;
  }

  function createRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    const nameCell = td();
    const name = document.createElement("div");
    name.className = "name";
    const sub = document.createElement("div");
    sub.className = "sub";
    // An interval strategy's last executions' durations (executions.recent).
    const exec = svgSpark("exec");
    exec.wrap.hidden = true;
    nameCell.append(name, sub, exec.wrap);
    const statusCell = td();
    const badge = document.createElement("span");
    badge.className = "badge status";
    statusCell.append(badge);
    const node = td("node");
    const cpu = svgSpark("cpu");
    const mem = svgSpark("mem");
    const pnl = svgSpark("pnl");
    const cpuCell = td();
    cpuCell.append(cpu.wrap);
    const memCell = td();
    memCell.append(mem.wrap);
    const pnlCell = td();
    pnlCell.append(pnl.wrap);
    const pnlTotal = td("num pnl-total");
    const pos = td("num positions");
    const orders = td("num orders");
    const restarts = td("num restarts");
    const tick = td("num tick-age");
    const errCell = td();
    const err = document.createElement("div");
    err.className = "error last-error";
    errCell.append(err);
    const actCell = td("actions");
    const buttons = {};
    for (const cmd of ACTIONS) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.cmd = cmd;
      b.textContent = cmd;
      buttons[cmd] = b;
      actCell.append(b);
    }
    const outcome = document.createElement("div");
    outcome.className = "outcome";
    actCell.append(outcome);
    tr.append(nameCell, statusCell, node, cpuCell, memCell, pnlCell, pnlTotal, pos, orders, restarts, tick, errCell, actCell);
    const row = {
      id,
      data: null,
      hist: { cpu: [], mem: [], pnl: [] },
      sparkDirty: true,
      lastStatus: null,
      visible: true, // until the observer says otherwise
      behind: false, // changed while off screen
      tr,
      els: { name, sub, exec, badge, node, cpu, mem, pnl, pnlTotal, pos, orders, restarts, tick, err, outcome, buttons },
    };
    byTr.set(tr, row);
    onScreen.observe(tr);
    return row;
  }

  function pushPoint(series, t, v) {
    if (v === null || v === undefined || Number.isNaN(v)) return;
    if (series.length && series[series.length - 1][0] >= t) return;
    series.push([t, v]);
  }

  function pruneSeries(series, now) {
    let cut = 0;
    while (cut < series.length && series[cut][0] < now - WINDOW_MS) cut++;
    if (cut) series.splice(0, cut);
  }

  function sparkPoints(series, now) {
    pruneSeries(series, now);
    if (series.length === 0) return "";
    let lo = Infinity, hi = -Infinity;
    for (const [, v] of series) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    const span = hi - lo || Math.abs(hi) || 1;
    const mid = hi === lo;
    // The x axis spans the data we have, up to the window: a young series fills the
    // width instead of hugging the right edge.
    const t0 = Math.min(now - MIN_SPAN_MS, Math.max(now - WINDOW_MS, series[0][0]));
    const width = now - t0;
    let out = "";
    for (const [t, v] of series) {
      const x = ((t - t0) / width) * 100;
      const y = mid ? 12 : 22 - ((v - lo) / span) * 20;
      out += x.toFixed(1) + "," + y.toFixed(1) + " ";
    }
    if (series.length === 1) {
      // One point: draw a short flat tick so it is visible.
      const [t] = series[0];
      const x = ((t - t0) / width) * 100;
      out += Math.min(100, x + 1.5).toFixed(1) + "," + (mid ? 12 : 22).toFixed(1);
    }
    return out.trim();
  }

  // An interval strategy's executions: "every 60s: 12 ok, 1 failed, 2 skipped, next 10:47:05".
  function executionsText(x) {
    if (!x || !x.execution_interval_s) return "";
    const next = x.next_execution_at ? ", next " + new Date(x.next_execution_at).toISOString().slice(11, 19) : "";
    return "every " + x.execution_interval_s + "s: " + x.successful_executions + " ok, " +
      x.failed_executions + " failed, " + x.skipped_executions + " skipped" + next;
  }

  // The last executions' durations as a sparkline, oldest left, evenly spaced (one
  // point per execution, not per unit of time); skipped ones are left out. Returns
  // the polyline's points, the text beside it and its tooltip.
  function execSpark(recent) {
    const ran = (recent || []).filter((x) => x.outcome !== "skipped");
    if (ran.length === 0) return { points: "", text: "", title: "" };
    let hi = 0;
    for (const x of ran) if (x.duration_ms > hi) hi = x.duration_ms;
    const step = ran.length > 1 ? 100 / (ran.length - 1) : 0;
    let points = "";
    ran.forEach((x, i) => {
      const y = hi > 0 ? 22 - (x.duration_ms / hi) * 20 : 22;
      points += (i * step).toFixed(1) + "," + y.toFixed(1) + " ";
    });
    if (ran.length === 1) points += "1.5,22";
    const last = ran[ran.length - 1];
    const failed = ran.filter((x) => x.outcome !== "ok").length;
    const text = last.duration_ms + " ms";
    const title = "last " + ran.length + " executions: " + ran.map((x) => x.duration_ms).join(", ") +
      " ms (max " + hi + " ms" + (failed ? ", " + failed + " failed or timed out" : "") + ")";
    return { points: points.trim(), text, title, failedLast: last.outcome !== "ok" };
  }

  // ---------- rendering ----------
  function markDirty(row) {
    dirty.add(row);
    if (redrawTimer === null) redrawTimer = setTimeout(flush, REDRAW_MS);
  }

  function flush() {
    redrawTimer = null;
    updateAlarms(); // even in a hidden tab: that is when a notification matters
    if (document.hidden) return; // caught up on visibilitychange
    const rows = dirty;
    dirty = new Set();
    const now = Date.now();
    requestAnimationFrame(() => {
      for (const row of rows) {
        if (row.visible) {
          row.behind = false;
          render(row, now);
        } else {
          row.behind = true;
          applyFilter(row);
        }
      }
      renderCounts();
    });
  }

  function render(row, now) {
    const d = row.data;
    if (!d) return;
    const e = row.els;
    setText(e.name, d.name);
    e.name.title = d.name + " (" + d.id + ")";
    const pid = d.pid ? "pid " + d.pid : "";
    const up = LIVE.has(d.status) && d.started_at ? "up " + fmtDuration((now - Date.parse(d.started_at)) / 1000) : "";
    setText(e.sub, [d.strategy_type, pid, up, executionsText(d.executions)].filter(Boolean).join(" · "));
    const spark = execSpark(d.executions && d.executions.recent);
    e.exec.wrap.hidden = spark.points === "";
    if (e.exec.line.getAttribute("points") !== spark.points) e.exec.line.setAttribute("points", spark.points);
    setText(e.exec.val, spark.text);
    e.exec.wrap.title = spark.title;
    setClass(e.exec.wrap, "neg", !!spark.failedLast);
    if (row.lastStatus !== d.status) {
      e.badge.className = "badge status st-" + d.status;
      setText(e.badge, d.status);
      if (row.lastStatus !== null) {
        row.tr.classList.remove("flash");
        void row.tr.offsetWidth; // restart the animation
        row.tr.classList.add("flash");
      }
      row.lastStatus = d.status;
      for (const cmd of ACTIONS) e.buttons[cmd].disabled = row.pending || !ENABLED[cmd](d.status);
    }
    setText(e.node, d.node || "–");
    const h = d.health;
    const fresh = h && LIVE.has(d.status);
    // Use against limit (CONTRACT §6) where a limit is set.
    const cpuLimit = fresh && h.cpu_limit_percent ? " / " + h.cpu_limit_percent + "%" : "";
    const memLimit = fresh && h.memory_limit_mb ? " / " + h.memory_limit_mb + " MB" : "";
    setText(e.cpu.val, fresh ? fmtNum(h.cpu_percent, 1) + "%" + cpuLimit : "–");
    setText(e.mem.val, fresh ? fmtNum(h.memory_mb, 1) + " MB" + memLimit : "–");
    const m = d.metrics;
    const pnl = m ? m.pnl : null;
    setText(e.pnl.val, fmtMoney(pnl));
    setClass(e.pnl.wrap, "neg", pnl !== null && pnl !== undefined && pnl < 0);
    setClass(e.pnl.wrap, "pos", pnl !== null && pnl !== undefined && pnl > 0);
    const total = m ? m.pnl_total : null;
    setText(e.pnlTotal, fmtMoney(total));
    setClass(e.pnlTotal, "neg", total !== null && total !== undefined && total < 0);
    setClass(e.pnlTotal, "pos", total !== null && total !== undefined && total > 0);
    setText(e.pos, m && m.positions_count !== null && m.positions_count !== undefined ? String(m.positions_count) : "–");
    setText(e.orders, m && m.orders_count !== null && m.orders_count !== undefined ? String(m.orders_count) : "–");
    setText(e.restarts, String(d.restart_count ?? 0));
    renderTick(row, now);
    const err = d.last_error || "";
    setText(e.err, err);
    e.err.title = err;
    if (row.sparkDirty) {
      row.sparkDirty = false;
      e.cpu.line.setAttribute("points", sparkPoints(row.hist.cpu, now));
      e.mem.line.setAttribute("points", sparkPoints(row.hist.mem, now));
      e.pnl.line.setAttribute("points", sparkPoints(row.hist.pnl, now));
    }
    applyFilter(row);
  }

  // The tick's age now, from the time of the last tick (`last_tick_at`), the rule
  // of engine_protocol::tick_age_ms: as of the executor's last report while its
  // reports come on time (within two intervals), counted to now once they are
  // overdue. An older executor without `last_tick_at`: its age, aged to now.
  function tickAgeMs(row, now) {
    const d = row.data;
    if (!d || !LIVE.has(d.status)) return null;
    const m = d.metrics;
    if (m && m.last_tick_at) {
      const at = Date.parse(m.last_tick_at);
      const reported = Date.parse(m.at);
      const every = m.every_ms ?? (m.metrics && m.metrics.metrics_interval_ms);
      const onTime = every > 0 && now - reported <= 2 * every;
      return Math.max(0, (onTime ? reported : now) - at);
    }
    if (!m || m.tick_age_ms === null || m.tick_age_ms === undefined) return null;
    return m.tick_age_ms + Math.max(0, now - row.metricsSeenAt);
  }

  function renderTick(row, now) {
    const age = tickAgeMs(row, now);
    setText(row.els.tick, fmtAge(age));
    const stale = !!(row.data.health && row.data.health.stale && LIVE.has(row.data.status));
    setClass(row.els.tick, "tick-old", stale || (age !== null && age > 30000));
    row.els.tick.title = stale ? "stale: no market data for longer than the manager's --stale-after" : "";
  }

  function renderCounts() {
    const counts = {};
    for (const row of byId.values()) {
      const s = row.data ? row.data.status : "?";
      counts[s] = (counts[s] || 0) + 1;
    }
    const parts = [byId.size + " strategies"];
    for (const s of STATUSES) if (counts[s]) parts.push(counts[s] + " " + s);
    setText($("counts"), parts.join(" · "));
    $("empty").hidden = byId.size !== 0;
  }

  function applyFilter(row) {
    const q = $("filter").value.trim().toLowerCase();
    const d = row.data;
    const show = !q || (d && (d.name.toLowerCase().includes(q) || d.strategy_type.toLowerCase().includes(q) || d.status === q));
    setClass(row.tr, "filtered", !show);
  }

  function sortValue(row) {
    const d = row.data || {};
    switch (sortKey) {
      case "status": return STATUSES.indexOf(d.status) * 1e6 + 0;
      case "pnl": return -((d.metrics && d.metrics.pnl) || 0);
      case "restarts": return -(d.restart_count || 0);
      default: return 0;
    }
  }

  function resort() {
    const rows = [...byId.values()];
    rows.sort((a, b) => {
      const k = sortValue(a) - sortValue(b);
      if (k !== 0) return k;
      const an = (a.data && a.data.name) || "", bn = (b.data && b.data.name) || "";
      return an < bn ? -1 : an > bn ? 1 : 0;
    });
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.appendChild(r.tr);
    tbody.appendChild(frag);
    for (const th of document.querySelectorAll("th.sortable")) setClass(th, "sorted", th.dataset.sort === sortKey);
  }

  // ---------- alarm ----------
  let alarmed = new Map(); // strategy id -> reason, as last shown
  let alarmsPrimed = false; // no notification for what was already wrong at load

  function alarmReason(d) {
    if (!d) return null;
    if (d.status === "error" || d.status === "backoff") return d.status;
    if (LIVE.has(d.status) && d.health && d.health.stale) return "stale";
    return null;
  }

  function updateAlarms() {
    const now = new Map();
    for (const row of byId.values()) {
      const reason = alarmReason(row.data);
      if (reason) now.set(row.id, reason);
    }
    const names = [];
    for (const [id, reason] of now) {
      const d = byId.get(id).data;
      names.push(d.name + " (" + reason + ")");
      if (alarmsPrimed && alarmed.get(id) !== reason) notify(d, reason);
    }
    names.sort();
    alarmed = now;
    alarmsPrimed = alarmsPrimed || byId.size > 0;
    const banner = $("alarm");
    banner.hidden = now.size === 0;
    const noun = now.size === 1 ? "strategy needs" : "strategies need";
    setText($("alarm-text"), now.size ? "⚠ " + now.size + " " + noun + " attention: " + names.join(", ") : "");
    const title = now.size ? "(" + now.size + ") ⚠ " + TITLE : TITLE;
    if (document.title !== title) document.title = title;
    $("alarm-notify").hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  function notify(d, reason) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    try {
      new Notification("⚠ " + d.name + ": " + reason, { body: d.last_error || "", tag: "engine-" + d.id });
    } catch (_) {
      // Some browsers allow notifications only from a service worker; the banner stays.
    }
  }

  // ---------- data in ----------
  function applySnapshot(list) {
    const now = Date.now();
    const seen = new Set();
    let added = false;
    for (const s of list) {
      seen.add(s.id);
      let row = byId.get(s.id);
      if (!row) {
        row = createRow(s.id);
        byId.set(s.id, row);
        added = true;
      }
      row.data = s;
      row.metricsSeenAt = now;
      if (s.health && LIVE.has(s.status)) {
        pushPoint(row.hist.cpu, Date.parse(s.health.at), s.health.cpu_percent);
        pushPoint(row.hist.mem, Date.parse(s.health.at), s.health.memory_mb);
      }
      if (s.metrics && s.metrics.pnl !== null && s.metrics.pnl !== undefined) {
        pushPoint(row.hist.pnl, Date.parse(s.metrics.at), s.metrics.pnl);
      }
      row.sparkDirty = true;
      markDirty(row);
    }
    for (const [id, row] of byId) {
      if (!seen.has(id)) {
        onScreen.unobserve(row.tr);
        row.tr.remove();
        byId.delete(id);
      }
    }
    if (added) resort();
    renderCounts();
  }

  async function loadSnapshot() {
    clearTimeout(snapshotTimer);
    snapshotTimer = setTimeout(loadSnapshot, REFRESH_MS);
    try {
      const r = await fetch("/api/strategies", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const body = await r.json();
      CLUSTER = body.cluster === true;
      applySnapshot(body.strategies);
      if (body.node) setText($("eng-node"), body.node);
    } catch (err) {
      setConn("reconnecting", "snapshot failed: " + err.message);
    }
  }

  let snapshotSoon = null;
  function loadSnapshotSoon() {
    if (snapshotSoon) return;
    snapshotSoon = setTimeout(() => {
      snapshotSoon = null;
      loadSnapshot();
    }, 500);
  }

  async function loadHistory() {
    try {
      const r = await fetch("/api/history?minutes=10", { cache: "no-store" });
      if (!r.ok) return;
      const body = await r.json();
      for (const [id, h] of Object.entries(body.strategies)) {
        const row = byId.get(id);
        if (!row) continue;
        const merge = (series, ts, vs) => {
          const old = series.splice(0);
          for (let i = 0; i < ts.length; i++) pushPoint(series, ts[i], vs[i]);
          for (const p of old) pushPoint(series, p[0], p[1]);
        };
        merge(row.hist.cpu, h.t, h.cpu);
        merge(row.hist.mem, h.t, h.mem);
        merge(row.hist.pnl, h.t, h.pnl);
        row.sparkDirty = true;
        markDirty(row);
      }
    } catch (_) {
      // Sparklines then start from the live stream.
    }
  }

  function onStatus(msg) {
    const row = byId.get(msg.strategy_id);
    if (!row || !row.data) return loadSnapshotSoon();
    const d = row.data;
    d.status = msg.status;
    d.pid = msg.pid ?? null;
    // In a cluster, the node that speaks for a strategy owns it (a move, a failover).
    if (CLUSTER && msg.node) d.node = msg.node;
    if (msg.error) d.last_error = msg.error;
    if (msg.status === "starting" || (LIVE.has(msg.status) && !d.started_at)) d.started_at = msg.timestamp;
    if (!LIVE.has(msg.status)) d.started_at = null;
    markDirty(row);
  }

  function onHealth(msg) {
    const row = byId.get(msg.strategy_id);
    if (!row || !row.data) return loadSnapshotSoon();
    const d = row.data;
    const t = Date.parse(msg.timestamp);
    d.health = {
      cpu_percent: msg.cpu_percent, memory_mb: msg.memory_mb, uptime_s: msg.uptime_s,
      cpu_limit_percent: msg.cpu_limit_percent, memory_limit_mb: msg.memory_limit_mb,
      stale: msg.stale === true, at: msg.timestamp,
    };
    d.restart_count = msg.restart_count;
    if (msg.pid) d.pid = msg.pid;
    if (LIVE.has(msg.status) && msg.status !== d.status) d.status = msg.status;
    pushPoint(row.hist.cpu, t, msg.cpu_percent);
    pushPoint(row.hist.mem, t, msg.memory_mb);
    row.sparkDirty = true;
    markDirty(row);
  }

  function onMetrics(msg) {
    const row = byId.get(msg.strategy_id);
    if (!row || !row.data) return loadSnapshotSoon();
    const m = msg.metrics || {};
    row.data.metrics = {
      pnl: m.pnl, pnl_total: m.pnl_total ?? null, positions_count: m.positions_count, orders_count: m.orders_count,
      success_rate: m.success_rate, tick_age_ms: m.last_tick_age_ms ?? null, at: msg.timestamp,
      last_tick_at: m.last_tick_at ?? null, every_ms: m.metrics_interval_ms ?? null,
    };
    row.metricsSeenAt = Date.now();
    pushPoint(row.hist.pnl, Date.parse(msg.timestamp), m.pnl);
    row.sparkDirty = true;
    markDirty(row);
  }

  function onEngine(msg) {
    engine = { msg, at: Date.now() };
    setText($("eng-node"), msg.node);
    setText($("eng-uptime"), fmtDuration(msg.uptime_s));
    setText($("eng-cpu"), fmtNum(msg.cpu_percent, 1) + "%");
    setText($("eng-mem"), fmtNum(msg.memory_mb, 1) + " MB");
    setText($("eng-running"), String(msg.strategies_running));
  }

  function setConn(state, text) {
    const el = $("conn");
    el.dataset.state = state;
    setText(el, text);
  }

  let source = null;
  function connect() {
    if (source) source.close();
    source = new EventSource(streamUrl("/api/events"));
    source.addEventListener("hello", (ev) => {
      try {
        const h = JSON.parse(ev.data);
        if (h.health_interval_ms) healthIntervalMs = h.health_interval_ms;
        if (h.node) setText($("eng-node"), h.node);
      } catch (_) { /* optional */ }
      setConn("live", "live");
      loadSnapshot().then(loadHistory);
    });
    const handler = (fn) => (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      fn(msg);
    };
    source.addEventListener("status", handler(onStatus));
    source.addEventListener("health", handler(onHealth));
    source.addEventListener("metrics", handler(onMetrics));
    source.addEventListener("engine", handler(onEngine));
    source.addEventListener("resync", () => loadSnapshot());
    source.onerror = () => setConn("reconnecting", "reconnecting…");
  }

  // ---------- commands ----------

  function showOutcome(row, state, text) {
    row.els.outcome.dataset.state = state;
    setText(row.els.outcome, text);
    row.els.outcome.title = text;
  }

  function setPending(row, pending) {
    row.pending = pending;
    for (const cmd of ACTIONS) {
      row.els.buttons[cmd].disabled = pending || !ENABLED[cmd](row.data ? row.data.status : "stopped");
    }
  }

  function authHeaders() {
    const headers = { "Content-Type": "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    return headers;
  }

  // POST a command to `url` and follow it to its outcome; `show(state, text)` tells
  // the user. Resolves with the final state ("executed", "failed", "refused", ...).
  async function runCommand(url, body, label, show) {
    show("pending", label + ": sending…");
    try {
      const r = await fetch(url, { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
      const answer = await r.json().catch(() => ({}));
      if (r.status === 401) {
        show("refused", label + ": " + (answer.error || "token required") + " — enter the bearer token above");
        $("token").focus();
        return "refused";
      }
      if (r.status !== 202) {
        show("refused", label + ": " + (answer.error || "HTTP " + r.status));
        return "refused";
      }
      show("pending", label + ": pending…");
      const outcome = await poll(answer.id, (status) => show("pending", label + ": " + status + "…"));
      if (outcome.status === "executed") {
        const ms = outcome.latency_ms !== null && outcome.latency_ms !== undefined ? " in " + fmtAge(outcome.latency_ms) : "";
        show("executed", label + ": executed" + ms);
      } else if (outcome.status === "failed") {
        show("failed", label + ": failed — " + (outcome.error || "no error text"));
      } else {
        show("pending", label + ": still " + outcome.status + " (command " + answer.id + ")");
      }
      loadSnapshotSoon();
      return outcome.status;
    } catch (err) {
      show("refused", label + ": " + err.message);
      return "refused";
    }
  }

  async function send(row, cmd) {
    setPending(row, true);
    try {
      const url = "/api/strategies/" + encodeURIComponent(row.data.name) + "/" + cmd;
      await runCommand(url, {}, cmd, (state, text) => showOutcome(row, state, text));
    } finally {
      setPending(row, false);
    }
  }

  // ---------- kill switch ----------
  // A question in a dialog of the page (not window.confirm): true when confirmed.
  function confirmAction(text, okLabel) {
    const dialog = $("confirm");
    setText($("confirm-text"), text);
    setText($("confirm-ok"), okLabel);
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-ok").onclick = null;
        $("confirm-cancel").onclick = null;
        dialog.oncancel = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.oncancel = (ev) => { ev.preventDefault(); done(false); };
      dialog.showModal();
    });
  }

  // Show a command's outcome in `el` (its state colours it; the title holds it whole).
  function showIn(el, state, text) {
    el.dataset.state = state;
    setText(el, text);
    el.title = text;
  }

  function showGlobal(state, text) {
    showIn($("global-outcome"), state, text);
  }

  async function sendGlobal(cmd) {
    const ok = await confirmAction(GLOBAL_WORDS[cmd], cmd + " all");
    if (!ok) {
      showGlobal("cancelled", cmd + " all: cancelled");
      return;
    }
    const buttons = document.querySelectorAll("button[data-global]");
    for (const b of buttons) b.disabled = true;
    try {
      await runCommand("/api/global/" + cmd, {}, cmd + " all", showGlobal);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  async function poll(id, progress) {
    const until = Date.now() + POLL_LIMIT_MS;
    let last = null;
    while (Date.now() < until) {
      const r = await fetch("/api/commands/" + id, { cache: "no-store" });
      if (r.ok) {
        last = await r.json();
        if (last.finished) return last;
        progress(last.status);
      }
      await new Promise((res) => setTimeout(res, POLL_MS));
    }
    return last || { status: "unknown" };
  }

  // ---------- details ----------
  function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  // The JSON merge patch (RFC 7386) that turns `from` into `to`: only what changed,
  // so hidden secrets ("***") that were not touched are never sent back.
  function mergePatch(from, to) {
    const patch = {};
    for (const k of Object.keys(from)) if (!(k in to)) patch[k] = null;
    for (const [k, v] of Object.entries(to)) {
      if (!(k in from)) patch[k] = v;
      else if (JSON.stringify(from[k]) === JSON.stringify(v)) continue;
      else patch[k] = isObject(from[k]) && isObject(v) ? mergePatch(from[k], v) : v;
    }
    return patch;
  }

  // The strategy's own verdict on the edited config, before anything is sent: the
  // patch when it accepts it, else null (and `show` says why).
  async function checkConfig(name, original, text, show) {
    let edited;
    try {
      edited = JSON.parse(text);
    } catch (err) {
      show("rejected", "not valid JSON: " + err.message);
      return null;
    }
    if (!isObject(edited)) {
      show("rejected", "the config must be a JSON object");
      return null;
    }
    const patch = mergePatch(original, edited);
    if (Object.keys(patch).length === 0) {
      show("unchanged", "nothing changed");
      return null;
    }
    show("pending", "checking with the strategy…");
    try {
      const r = await fetch("/api/strategies/" + encodeURIComponent(name) + "/validate", {
        method: "POST", headers: authHeaders(), body: JSON.stringify({ config: patch }),
      });
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        show("valid", "the strategy accepts this config");
        return patch;
      }
      const extra = r.status === 401 ? " — enter the bearer token above" : "";
      show(r.status === 422 ? "rejected" : "refused", (body.error || "HTTP " + r.status) + extra);
    } catch (err) {
      show("refused", "cannot check the config: " + err.message);
    }
    return null;
  }

  function button(text, id) {
    const b = document.createElement("button");
    b.type = "button";
    b.id = id;
    b.textContent = text;
    return b;
  }

  function configEditor(row, config, message) {
    const wrap = document.createElement("div");
    wrap.className = "editor";
    const area = document.createElement("textarea");
    area.id = "config-edit";
    area.spellcheck = false;
    area.value = JSON.stringify(config, null, 2);
    const check = button("check", "config-check");
    const apply = button("apply", "config-apply");
    const out = document.createElement("div");
    out.id = "config-msg";
    out.className = "outcome";
    const show = (state, text) => {
      out.dataset.state = state;
      setText(out, text);
      out.title = text;
    };
    if (message) show(message.state, message.text);
    const name = row.data.name;
    check.onclick = () => checkConfig(name, config, area.value, show);
    apply.onclick = async () => {
      check.disabled = apply.disabled = true;
      try {
        const patch = await checkConfig(name, config, area.value, show);
        if (!patch) return;
        const url = "/api/strategies/" + encodeURIComponent(name) + "/update";
        const state = await runCommand(url, { config: patch }, "update", show);
        if (state === "executed") showDetail(row, { state, text: out.textContent });
      } finally {
        check.disabled = apply.disabled = false;
      }
    };
    const buttons = document.createElement("div");
    buttons.className = "row";
    buttons.append(check, apply, out);
    wrap.append(area, buttons);
    return wrap;
  }

  async function loadLogs(name, pre) {
    try {
      const r = await fetch("/api/strategies/" + encodeURIComponent(name) + "/logs?lines=" + LOG_LINES, { cache: "no-store" });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
      if (!body.exists) pre.textContent = "no log yet at " + body.path;
      else pre.textContent = body.lines.length ? body.lines.join("\n") : "(the log is empty)";
      pre.scrollTop = pre.scrollHeight;
    } catch (err) {
      pre.textContent = "could not load the log: " + err.message;
    }
  }

  function logSection() {
    const wrap = document.createElement("div");
    const pre = document.createElement("pre");
    pre.id = "detail-logs";
    pre.className = "logs";
    pre.textContent = "loading…";
    const refresh = button("refresh", "logs-refresh");
    wrap.append(pre, refresh);
    return { wrap, pre, refresh };
  }

  // The strategy's newest paper orders (`strategy_orders`), each with the lease
  // epoch it was placed under.
  const ORDERS_SHOWN = 20;
  async function loadOrders(name, wrap) {
    try {
      const r = await fetch("/api/strategies/" + encodeURIComponent(name) + "/orders?limit=" + ORDERS_SHOWN, { cache: "no-store" });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
      wrap.textContent = "";
      if (!body.orders.length) {
        wrap.textContent = "no orders recorded yet";
        return;
      }
      const note = document.createElement("p");
      note.className = "counts";
      note.textContent = body.orders.length + " newest of " + body.total + " orders";
      const t = detailTable(body.orders, [
        ["at", (v) => fmtUtc(v)], ["side"], ["token"], ["quantity"], ["price"],
        ["lease_epoch", (v) => "epoch " + v], ["client_order_id"],
      ]);
      t.id = "detail-orders";
      wrap.append(note, t);
    } catch (err) {
      wrap.textContent = "could not load the orders: " + err.message;
    }
  }

  function detailTable(rows, cols) {
    const t = document.createElement("table");
    for (const item of rows) {
      const tr = document.createElement("tr");
      for (const [key, fmt] of cols) {
        const c = document.createElement("td");
        const v = item[key];
        c.textContent = fmt ? fmt(v, item) : (v ?? "");
        if (key === "error" && v) c.className = "err";
        tr.append(c);
      }
      t.append(tr);
    }
    return t;
  }

  // `message`: an outcome to show in the editor once loaded (after an update).
  async function showDetail(row, message) {
    const panel = $("detail");
    setText($("detail-name"), row.data.name);
    const body = $("detail-body");
    body.textContent = "loading…";
    panel.hidden = false;
    try {
      const r = await fetch("/api/strategies/" + encodeURIComponent(row.data.name), { cache: "no-store" });
      const d = await r.json();
      if (!r.ok) throw new Error(d.error || "HTTP " + r.status);
      body.textContent = "";
      const section = (title, node) => {
        const h = document.createElement("h3");
        h.textContent = title;
        body.append(h, node);
      };
      const pre = (v) => {
        const p = document.createElement("pre");
        p.textContent = JSON.stringify(v, null, 2);
        return p;
      };
      const time = (v) => fmtUtc(v);
      section("state", pre({
        status: d.status, desired_state: d.desired_state, pid: d.pid, restart_count: d.restart_count,
        auto_start: d.auto_start, started_at: fmtUtc(d.started_at) || null, last_error: d.last_error,
      }));
      section("config (checked by the strategy before an update is sent)", configEditor(row, d.config, message));
      section("latest metrics", pre(d.metrics ? d.metrics.metrics : null));
      const orders = document.createElement("div");
      orders.textContent = "loading…";
      const ordersRefresh = button("refresh", "orders-refresh");
      const ordersWrap = document.createElement("div");
      ordersWrap.append(orders, ordersRefresh);
      section("recent orders", ordersWrap);
      ordersRefresh.onclick = () => loadOrders(d.name, orders);
      loadOrders(d.name, orders);
      const logs = logSection();
      section("recent log lines", logs.wrap);
      logs.refresh.onclick = () => loadLogs(d.name, logs.pre);
      loadLogs(d.name, logs.pre);
      section("history: commands", detailTable(d.recent_commands, [
        ["created_at", time], ["command", (v, c) => c.global ? v + " (global)" : v], ["status"], ["error"],
      ]));
      section("history: events", detailTable(d.recent_events, [
        ["at", time], ["old_status", (v, e) => (v || "") + " → " + e.new_status], ["reason"], ["error"],
      ]));
    } catch (err) {
      body.textContent = "could not load: " + err.message;
    }
  }

  // ---------- wiring ----------
  tbody.addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr) return;
    const row = byId.get(tr.dataset.id);
    if (!row || !row.data) return;
    const button = ev.target.closest("button[data-cmd]");
    if (button && !button.disabled) {
      send(row, button.dataset.cmd);
    } else if (ev.target.closest(".name")) {
      showDetail(row);
    }
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  for (const b of document.querySelectorAll("button[data-global]")) {
    b.addEventListener("click", () => sendGlobal(b.dataset.global));
  }
  $("alarm-notify").addEventListener("click", () => {
    Notification.requestPermission().then(updateAlarms);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && !$("confirm").open) $("detail").hidden = true;
  });
  $("filter").addEventListener("input", () => { for (const row of byId.values()) applyFilter(row); });
  for (const th of document.querySelectorAll("th.sortable")) {
    th.addEventListener("click", () => { sortKey = th.dataset.sort; resort(); });
  }
  const tokenInput = $("token");
  tokenInput.value = token();
  tokenInput.addEventListener("input", () => {
    const typed = tokenInput.value.trim();
    if (typed) sessionStorage.setItem(TOKEN_KEY, typed);
    else sessionStorage.removeItem(TOKEN_KEY);
  });
  tokenInput.addEventListener("change", () => { setToken(tokenInput.value); connect(); });
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const given = $("token-ask").value.trim();
    if (!given) return;
    setToken(given);
    $("token-dialog").close();
    // The stream again with the token (its hello reloads the snapshot), and the rest.
    connect();
    loadRuns();
    loadSchedules();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      for (const row of byId.values()) { row.sparkDirty = true; markDirty(row); }
    }
  });
  // Ages, uptimes and the sparkline window move with the clock, not only with messages.
  let clockTicks = 0;
  setInterval(() => {
    if (document.hidden) return;
    const now = Date.now();
    const slide = ++clockTicks % 5 === 0; // sparklines slide every 10 s without data
    for (const row of byId.values()) {
      if (slide) row.sparkDirty = true;
      markDirty(row);
    }
    if (engine) setText($("eng-uptime"), fmtDuration(engine.msg.uptime_s + (now - engine.at) / 1000));
  }, 2000);

  // ---------- runs ----------
  // The Runs panel: the queue and recent runs (GET /api/runs, GET /api/queue, read
  // again every RUNS_REFRESH_MS as a safety net), a live progress bar per unfinished
  // run fed by its own event stream (/api/runs/{id}/events: the first event is the
  // run's present state, the last its final state with the result), a form that
  // POSTs a run, cancel buttons (a cancel command, followed to its outcome) and the
  // result of a finished run: a backtest's metrics and equity curve, a screener's
  // ranked table, an alert run's alerts.
  const RUNS_REFRESH_MS = 5000;
  const RUNS_SHOWN = 30;
  const MAX_RUN_STREAMS = 12;
  const FINAL_RUN = new Set(["completed", "error", "cancelled", "timed_out"]);
  const runRows = new Map(); // run id -> { data, tr, els, source }

  function runRow(id) {
    let row = runRows.get(id);
    if (row) return row;
    const tr = document.createElement("tr");
    tr.dataset.run = id;
    const cells = [];
    for (let i = 0; i < 9; i++) cells.push(td(i === 4 || i === 6 ? "num" : ""));
    const name = document.createElement("div");
    name.className = "name run-name";
    const sub = document.createElement("div");
    sub.className = "sub";
    cells[0].append(name, sub);
    const badge = document.createElement("span");
    badge.className = "badge run-state";
    cells[2].append(badge);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    const pct = document.createElement("span");
    pct.className = "pct";
    bar.append(fill, pct);
    cells[3].append(bar);
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "run-cancel";
    cancel.textContent = "cancel";
    const show = document.createElement("button");
    show.type = "button";
    show.className = "run-show";
    show.textContent = "result";
    const outcome = document.createElement("div");
    outcome.className = "outcome";
    cells[8].append(cancel, show, outcome);
    tr.append(...cells);
    row = { id, data: null, tr, source: null,
      els: { name, sub, mode: cells[1], badge, fill, pct, items: cells[4], now: cells[5], eta: cells[6], created: cells[7], cancel, show, outcome } };
    runRows.set(id, row);
    return row;
  }

  // Merge what a row or an event says into the run's model, and draw it.
  function updateRun(id, msg) {
    const row = runRow(id);
    const d = Object.assign(row.data || {}, msg);
    if (msg.metrics && !("eta_s" in msg)) d.eta_s = msg.metrics.eta_s;
    row.data = d;
    const e = row.els;
    setText(e.name, d.strategy || d.name || "");
    setText(e.sub, String(id).slice(0, 8) + (d.priority ? " · " + d.priority : "") +
      (d.position_in_queue ? " · #" + d.position_in_queue + " in queue" : ""));
    e.name.title = id;
    setText(e.mode, d.mode || "");
    const state = d.state || "queued";
    e.badge.className = "badge run-state rs-" + state;
    setText(e.badge, state);
    const pct = Math.max(0, Math.min(100, Number(d.progress_percent) || 0));
    e.fill.style.width = pct.toFixed(1) + "%";
    setText(e.pct, pct.toFixed(1) + "%");
    const total = d.total_items, done = d.completed_items;
    setText(e.items, total !== null && total !== undefined ? (done || 0) + "/" + total : "–");
    const eta = d.metrics ? d.metrics.eta_s : d.eta_s;
    setText(e.now, FINAL_RUN.has(state) ? (d.error || "") : [d.current_item, d.stage].filter(Boolean).join(" · "));
    e.now.className = state === "error" || state === "timed_out" ? "err" : "";
    setText(e.eta, FINAL_RUN.has(state) ? "" : fmtDuration(eta));
    setText(e.created, d.created_at ? fmtUtc(d.created_at).replace(" UTC", "").slice(0, 19) : "");
    e.cancel.disabled = FINAL_RUN.has(state) || row.cancelling;
    e.show.disabled = !FINAL_RUN.has(state);
    if (FINAL_RUN.has(state) && row.source) {
      row.source.close();
      row.source = null;
    }
    return row;
  }

  function follow(row) {
    if (row.source || FINAL_RUN.has(row.data && row.data.state)) return;
    let open = 0;
    for (const r of runRows.values()) if (r.source) open++;
    if (open >= MAX_RUN_STREAMS) return; // the periodic read keeps it current
    const source = new EventSource(streamUrl("/api/runs/" + row.id + "/events"));
    row.source = source;
    const onEvent = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      updateRun(row.id, msg);
      if (ev.type === "snapshot" && FINAL_RUN.has(msg.state)) {
        if ($("run-result").dataset.run === row.id) showRunResult(row.id);
        loadRunsSoon();
      }
    };
    for (const kind of ["snapshot", "started", "progress", "ticker_completed", "stage_completed",
      "completed", "error", "cancelled", "timed_out"]) source.addEventListener(kind, onEvent);
    // The stream ends after the final event; anything else is retried by the browser,
    // and a run that is over closes it (updateRun).
    source.onerror = () => {
      if (row.data && FINAL_RUN.has(row.data.state)) { source.close(); row.source = null; }
    };
  }

  function drawRuns(list) {
    const tbody = $("run-rows");
    const frag = document.createDocumentFragment();
    for (const run of list) {
      const row = updateRun(run.run_id, run);
      frag.appendChild(row.tr);
      follow(row);
    }
    tbody.textContent = "";
    tbody.appendChild(frag);
    $("runs-empty").hidden = list.length !== 0;
  }

  let runsTimer = null;
  async function loadRuns() {
    try {
      const [runs, queue] = await Promise.all([
        fetch("/api/runs?limit=" + RUNS_SHOWN, { cache: "no-store" }).then((r) => r.json()),
        fetch("/api/queue", { cache: "no-store" }).then((r) => r.json()),
      ]);
      // Queued runs first (in queue order), then the others, newest first.
      const queued = queue.queue || [];
      const ids = new Set(queued.map((r) => r.run_id));
      drawRuns(queued.concat((runs.runs || []).filter((r) => !ids.has(r.run_id))));
      setText($("runs-summary"), queue.total_queued + " queued · " + queue.total_running + " running · at most " +
        queue.max_concurrent + " at once");
    } catch (err) {
      setText($("runs-summary"), "could not load the runs: " + err.message);
    }
  }
  function loadRunsSoon() {
    clearTimeout(runsTimer);
    runsTimer = setTimeout(loadRuns, 200);
  }

  // ---------- schedules ----------
  // The Schedules panel: every schedule of runs, grouped by strategy, with its
  // timetable, next run time and statistics (GET /api/schedules, read with the runs).
  async function loadSchedules() {
    let body;
    try {
      body = await fetch("/api/schedules", { cache: "no-store" }).then((r) => r.json());
    } catch (err) {
      setText($("schedules-summary"), "could not load the schedules: " + err.message);
      return;
    }
    const list = body.schedules || [];
    const frag = document.createDocumentFragment();
    let last = null;
    for (const s of list) {
      const tr = document.createElement("tr");
      const when = s.cron ? s.cron + (s.timezone ? " " + s.timezone : "") : "every " + fmtDuration(s.interval_s);
      const next = !s.enabled ? "disabled" : s.next_run_at ? fmtUtc(s.next_run_at).slice(0, 19) : "–";
      const cells = [s.strategy === last ? "" : s.strategy, s.mode, when, next,
        String(s.runs_created), String(s.skipped_overlap), String(s.missed), s.overlap + " · " + s.catch_up,
        s.last_error || ""];
      last = s.strategy;
      cells.forEach((text, i) => {
        const c = td(i >= 4 && i <= 6 ? "num" : i === 8 && text ? "err" : "");
        c.textContent = text;
        tr.append(c);
      });
      tr.title = s.id;
      frag.append(tr);
    }
    const tbody = $("schedule-rows");
    tbody.textContent = "";
    tbody.append(frag);
    $("schedules-empty").hidden = list.length !== 0;
    setText($("schedules-summary"), list.length + " schedule" + (list.length === 1 ? "" : "s"));
  }

  function fillStrategies() {
    const select = $("run-strategy");
    const names = [...byId.values()].map((r) => r.data && r.data.name).filter(Boolean).sort();
    const current = select.value;
    const have = [...select.options].map((o) => o.value);
    if (have.join("\n") === names.join("\n")) return;
    select.textContent = "";
    for (const name of names) {
      const o = document.createElement("option");
      o.value = o.textContent = name;
      select.append(o);
    }
    if (names.includes(current)) select.value = current;
  }

  function showRunOutcome(state, text) {
    showIn($("run-outcome"), state, text);
  }

  async function startRun(ev) {
    ev.preventDefault();
    let parameters;
    try {
      parameters = JSON.parse($("run-params").value.trim() || "{}");
    } catch (err) {
      showRunOutcome("refused", "parameters: not valid JSON: " + err.message);
      return;
    }
    const body = { strategy: $("run-strategy").value, mode: $("run-mode").value, parameters,
      priority: $("run-priority").value };
    const timeout = $("run-timeout").value.trim();
    if (timeout) body.timeout_s = Number(timeout);
    $("run-start").disabled = true;
    try {
      const r = await fetch("/api/runs", { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
      const answer = await r.json().catch(() => ({}));
      if (r.status !== 202) {
        const extra = r.status === 401 ? " — enter the bearer token above" : "";
        showRunOutcome("refused", (answer.error || "HTTP " + r.status) + extra);
        return;
      }
      const start = answer.estimated_start_time ? ", estimated start " + fmtUtc(answer.estimated_start_time) : "";
      showRunOutcome("executed", "run " + answer.run_id.slice(0, 8) + " queued, #" +
        (answer.position_in_queue || 1) + " in the queue" + start);
      const row = updateRun(answer.run_id, answer);
      $("run-rows").prepend(row.tr);
      $("runs-empty").hidden = true;
      follow(row);
    } catch (err) {
      showRunOutcome("refused", err.message);
    } finally {
      $("run-start").disabled = false;
    }
  }

  async function cancelRun(row) {
    row.cancelling = true;
    row.els.cancel.disabled = true;
    const show = (state, text) => showIn(row.els.outcome, state, text);
    try {
      await runCommand("/api/runs/" + row.id + "/cancel", {}, "cancel", show);
    } finally {
      row.cancelling = false;
      loadRunsSoon();
    }
  }

  // ----- a finished run's result -----
  function kv(rows) {
    const t = document.createElement("table");
    for (const [k, v] of rows) {
      const tr = document.createElement("tr");
      const a = document.createElement("td");
      a.textContent = k;
      const b = document.createElement("td");
      b.className = "num";
      b.textContent = fmtValue(v);
      tr.append(a, b);
      t.append(tr);
    }
    return t;
  }
  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(4);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function grid(headers, rows) {
    const t = document.createElement("table");
    const head = document.createElement("tr");
    for (const h of headers) {
      const th = document.createElement("th");
      th.textContent = h;
      head.append(th);
    }
    t.append(head);
    for (const cells of rows) {
      const tr = document.createElement("tr");
      for (const c of cells) {
        const cell = document.createElement("td");
        cell.textContent = fmtValue(c);
        tr.append(cell);
      }
      t.append(tr);
    }
    return t;
  }
  // An equity curve as a line: points [t, equity] or {t|ts|timestamp, equity|value} or numbers.
  function equityChart(curve) {
    const values = curve.map((p) => Array.isArray(p) ? p[1] : typeof p === "number" ? p : (p.equity ?? p.value))
      .filter((v) => typeof v === "number");
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "equity");
    svg.setAttribute("viewBox", "0 0 100 40");
    svg.setAttribute("preserveAspectRatio", "none");
    const line = document.createElementNS(ns, "polyline");
    const lo = Math.min(...values), hi = Math.max(...values);
    const span = hi - lo || 1;
    line.setAttribute("points", values.map((v, i) =>
      ((i / Math.max(1, values.length - 1)) * 100).toFixed(2) + "," + (38 - ((v - lo) / span) * 36).toFixed(2)).join(" "));
    svg.append(line);
    svg.dataset.points = String(values.length);
    return svg;
  }
  function perSymbolRows(per) {
    const rows = Array.isArray(per) ? per.map((m) => [m.symbol, m]) : Object.entries(per || {});
    return rows.map(([s, m]) => {
      const x = Object.assign({}, m, m.performance_metrics || {});
      return [s, x.total_return, x.sharpe_ratio, x.max_drawdown, x.hit_rate, x.trades];
    });
  }
  function resultView(run) {
    const box = document.createElement("div");
    const h = (text) => { const e = document.createElement("h4"); e.textContent = text; box.append(e); };
    const r = run.result;
    if (run.state !== "completed" || !r) {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = run.state + ": " + (run.error || "no result");
      box.append(p);
      return box;
    }
    if (run.mode === "backtest") {
      h("summary");
      box.append(kv(Object.entries(r.summary || {})));
      h("performance metrics");
      box.append(kv(Object.entries(r.performance_metrics || {})));
      if (Array.isArray(r.equity_curve) && r.equity_curve.length) {
        h("equity curve");
        box.append(equityChart(r.equity_curve));
      }
      const per = perSymbolRows(r.per_symbol);
      if (per.length) {
        h("per symbol");
        box.append(grid(["symbol", "total return", "sharpe", "max drawdown", "hit rate", "trades"], per));
      }
    } else if (run.mode === "screener") {
      h("ranked results (" + (r.ranked_results || []).length + " of " + fmtValue(r.universe_size) + ")");
      box.append(grid(["#", "symbol", "score", "price", "sector"],
        (r.ranked_results || []).map((x, i) => [i + 1, x.symbol, x.score, x.current_price, x.sector])));
    } else {
      h("alerts (" + (r.alerts || []).length + " from " + fmtValue(r.symbols_monitored) + " symbols)");
      box.append(grid(["symbol", "type", "priority", "message"],
        (r.alerts || []).map((a) => [a.symbol, a.type, a.priority, a.message])));
    }
    return box;
  }
  async function showRunResult(id) {
    const panel = $("run-result");
    panel.dataset.run = id;
    panel.hidden = false;
    const body = $("run-result-body");
    body.textContent = "loading…";
    try {
      const r = await fetch("/api/runs/" + id, { cache: "no-store" });
      const run = await r.json();
      if (!r.ok) throw new Error(run.error || "HTTP " + r.status);
      setText($("run-result-title"), run.mode + " of " + run.strategy + " · " + run.state + " · " + id);
      body.textContent = "";
      body.append(resultView(run));
    } catch (err) {
      body.textContent = "could not load the run: " + err.message;
    }
  }

  $("run-form").addEventListener("submit", startRun);
  $("run-rows").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-run]");
    const row = tr && runRows.get(tr.dataset.run);
    if (!row) return;
    if (ev.target.closest("button.run-cancel") && !ev.target.disabled) cancelRun(row);
    else if (ev.target.closest("button.run-show") && !ev.target.disabled) showRunResult(row.id);
  });
  $("run-result-close").addEventListener("click", () => { $("run-result").hidden = true; delete $("run-result").dataset.run; });
  setInterval(() => { if (!document.hidden) { loadRuns(); loadSchedules(); } }, RUNS_REFRESH_MS);
  setInterval(fillStrategies, 1000);
  loadRuns();
  loadSchedules();

  resort();
  connect();
})();
