// tidemark status page. Plain JavaScript, no build step, no third-party code.
// It polls this daemon's JSON API (same origin) and renders what it answers.
// Every value is inserted with textContent, never as HTML: audit reasons and
// report keys are free text from operators and documents.
"use strict";

(function () {
  const TOKEN_KEY = "tidemark.token";
  const params = new URLSearchParams(location.search);
  const refreshSeconds = Math.max(1, Number(params.get("refresh")) || 2);
  const AUDIT_LIMIT = 50;
  let polls = 0;

  // ---- small helpers -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const $ = (id) => document.getElementById(id);
  function fill(parent, ...nodes) { parent.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== "" && n !== null && n !== undefined && n !== false)); }
  function emptyRow(cols, text) { return el("tr", {}, el("td", { colspan: cols, class: "empty", text })); }

  function fmtInt(n) {
    if (n === undefined || n === null || Number.isNaN(Number(n))) return "—";
    const s = String(Math.trunc(Number(n)));
    return s.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }
  function fmtDuration(sec) {
    if (sec === undefined || sec === null || !isFinite(sec)) return "—";
    sec = Math.max(0, sec);
    if (sec < 10) return sec.toFixed(1) + " s";
    if (sec < 120) return Math.round(sec) + " s";
    if (sec < 7200) return Math.floor(sec / 60) + " min " + Math.round(sec % 60) + " s";
    if (sec < 172800) return Math.floor(sec / 3600) + " h " + Math.round((sec % 3600) / 60) + " min";
    return Math.round(sec / 86400) + " days";
  }
  function parseTime(t) {
    if (t === undefined || t === null || t === "") return null;
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    if (isNaN(d.getTime()) || d.getTime() <= 0) return null;
    return d;
  }
  // UTC, to the second: every timestamp on the page compares with the audit log.
  function fmtTime(t) {
    const d = parseTime(t);
    return d ? d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "") : "—";
  }
  function ago(t) {
    const d = parseTime(t);
    return d ? fmtDuration((Date.now() - d.getTime()) / 1000) + " ago" : "";
  }
  // timeCell shows how long ago t was (dense, comparable at a glance); the
  // exact UTC timestamp is the element's title and datetime.
  function timeCell(t) {
    const d = parseTime(t);
    if (!d) return el("td", { text: "—" });
    return el("td", { class: "time", title: fmtTime(d) + " UTC" }, el("time", { datetime: d.toISOString(), text: ago(d) }));
  }
  // Words, not colours, carry the state; the class only adds colour.
  function tone(state) {
    const s = String(state || "").toLowerCase();
    if (/(fail|fired|breach|block|abort|revert|rolled.?back|error|lost|refused|halt|diverg|unreach|denied)/.test(s)) return "bad";
    if (/(pass|^ok$|^ok\b|ready|clean|done|complete|met|healthy|green|succeed|open|running)/.test(s)) return "good";
    if (/(pend|wait|hold|held|start|paused|progress|in.?flight|armed|dry)/.test(s)) return "warn";
    return "";
  }
  function badge(text, cls) { return el("span", { class: "badge " + (cls === undefined ? tone(text) : cls), text }); }
  function short(v, n) {
    const s = typeof v === "string" ? v : JSON.stringify(v);
    return s && s.length > n ? s.slice(0, n - 1) + "…" : s;
  }
  function pick(o, ...keys) {
    for (const k of keys) if (o && o[k] !== undefined && o[k] !== null && o[k] !== "") return o[k];
    return undefined;
  }
  function rawDetails(label, v) {
    return el("details", {}, el("summary", { class: "muted", text: label }), el("pre", { class: "raw", text: JSON.stringify(v, null, 2) }));
  }

  // ---- token ---------------------------------------------------------------

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }
  function setToken(t) {
    try {
      if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token lives for this poll only */ }
  }

  async function get(path) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    try {
      const r = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
      const text = await r.text();
      let body = text;
      try { body = JSON.parse(text); } catch (e) { /* text routes: healthz, readyz, metrics */ }
      return { ok: r.ok, status: r.status, body };
    } catch (e) {
      return { ok: false, status: 0, body: null, error: String(e) };
    }
  }
  function errText(res) {
    if (res.status === 0) return "daemon unreachable" + (res.error ? " (" + res.error + ")" : "");
    const msg = res.body && typeof res.body === "object" && res.body.error ? res.body.error : short(String(res.body || ""), 160);
    return "HTTP " + res.status + (msg ? ": " + msg : "");
  }

  // ---- health --------------------------------------------------------------

  function renderHealth(hz, rz, st) {
    fill($("healthz"), hz.ok ? badge("ok", "good") : badge(hz.status === 0 ? "unreachable" : "failing (HTTP " + hz.status + ")", "bad"));
    let ready;
    if (rz.ok) ready = badge("ready", "good");
    else if (rz.status === 503) ready = badge("starting", "warn");
    else ready = badge(rz.status === 0 ? "unreachable" : "not ready (HTTP " + rz.status + ")", "bad");
    fill($("readyz"), ready);
    if (st.ok) {
      $("roles").textContent = (st.body.roles || []).join(", ") || "none";
      $("spec").textContent = st.body.spec_version || "none";
    }
  }

  // ---- lag -----------------------------------------------------------------

  function versionCell(v) {
    if (!v || (!v.T && !v.I)) return el("td", { "data-col": "applied", text: "—" });
    return el("td", { "data-col": "applied" }, el("span", { class: "mono", text: v.T + "." + v.I }), " ", el("span", { class: "muted", text: fmtTime(v.T) + " (" + ago(v.T) + ")" }));
  }

  function renderLag(st) {
    const body = $("lag-rows");
    if (!st.ok) {
      fill(body, emptyRow(8, "cannot read /v1/status: " + errText(st)));
      $("lag-summary").textContent = "";
      return;
    }
    const parts = st.body.partitions || [];
    const paused = new Set((st.body.paused || []).map((p) => p.topic + "/" + p.partition));
    if (parts.length === 0) {
      const roles = st.body.roles || [];
      fill(body, emptyRow(8, roles.includes("sink") ? "no partitions assigned to this daemon yet" : "this daemon does not run the sink role"));
      $("lag-summary").textContent = "";
      return;
    }
    let total = 0, worst = 0, npaused = 0, maxRecs = 0;
    for (const p of parts) {
      total += Math.max(0, p.records_behind || 0);
      worst = Math.max(worst, p.seconds_behind || 0);
      maxRecs = Math.max(maxRecs, p.records_behind || 0);
      if (p.paused || paused.has(p.topic + "/" + p.partition)) npaused++;
    }
    fill($("lag-summary"),
      el("b", { text: fmtInt(parts.length) }), " partitions · ",
      el("b", { text: fmtInt(npaused) }), " paused · ",
      el("b", { text: fmtInt(total) }), " records behind in total · worst ",
      el("b", { text: fmtDuration(worst) }), " behind");
    fill(body, parts.map((p) => {
      const isPaused = p.paused || paused.has(p.topic + "/" + p.partition);
      const behind = p.records_behind || 0;
      const meter = el("span", { class: "meter" + (isPaused ? " bad" : ""), "aria-hidden": "true" }, el("span"));
      // Log scale against at least 10,000 records: one record (a caught-up
      // transactional partition's commit marker) stays a sliver, a real
      // backlog fills the bar.
      meter.firstChild.style.width = Math.round((100 * Math.log1p(behind)) / Math.log1p(Math.max(maxRecs, 10000))) + "%";
      let state;
      if (isPaused) state = badge("paused", "warn");
      else if (p.committed < 0) state = badge("no offset yet", "");
      else if (behind <= 1) state = badge("caught up", "good");
      else state = badge("catching up", "");
      return el("tr", { "data-tp": p.topic + "/" + p.partition },
        el("td", { class: "mono", "data-col": "topic", text: p.topic }),
        el("td", { class: "num", "data-col": "partition", text: p.partition }),
        el("td", { "data-col": "state" }, state),
        el("td", { class: "num", "data-col": "committed", text: p.committed < 0 ? "—" : fmtInt(p.committed) }),
        el("td", { class: "num", "data-col": "end", text: fmtInt(p.end) }),
        el("td", { class: "num", "data-col": "records_behind" }, meter, fmtInt(behind)),
        el("td", { class: "num", "data-col": "seconds_behind", text: fmtDuration(p.seconds_behind || 0) }),
        versionCell(p.applied_version));
    }));
  }

  // ---- lag over the last hour ----------------------------------------------
  // GET /v1/lag/history: the daemon samples its sink partitions' lag every
  // interval_seconds and keeps window_seconds of it. The page reads it once
  // per sample interval, not on every poll: nothing new comes in between.

  const charts = window.tidemarkCharts;
  let lagHistory = null, lagHistoryRead = 0;

  function chartWidth(box) { return Math.max(420, Math.min(1400, Math.floor(box.clientWidth || 900))); }
  // shortDuration labels a value axis: 0, 30 s, 2 min, 1.5 h.
  function shortDuration(sec) {
    if (sec === 0) return "0";
    if (sec < 120) return (Math.round(sec * 10) / 10) + " s";
    if (sec < 7200) return (Math.round(sec / 6) / 10) + " min";
    return (Math.round(sec / 360) / 10) + " h";
  }
  // spanText names a whole window: 1 h, 30 min.
  function spanText(sec) {
    if (sec > 0 && sec % 3600 === 0) return sec / 3600 + " h";
    if (sec > 0 && sec % 60 === 0) return sec / 60 + " min";
    return fmtDuration(sec);
  }
  function emptyNote(key, text) { return el("p", { class: "empty", "data-empty": key, text }); }

  async function readLagHistory(st) {
    if (st.ok && !(st.body.roles || []).includes("sink")) return null;
    const every = lagHistory && lagHistory.ok && lagHistory.body.interval_seconds > 0 ? lagHistory.body.interval_seconds : 10;
    if (lagHistory === null || !lagHistory.ok || Date.now() - lagHistoryRead >= every * 1000) {
      lagHistory = await get("/v1/lag/history");
      lagHistoryRead = Date.now();
    }
    return lagHistory;
  }

  function renderLagChart(st, res) {
    const box = $("lag-chart");
    if (st.ok && !(st.body.roles || []).includes("sink")) { fill(box, emptyNote("lag-history", "this daemon does not run the sink role: no lag to draw")); return; }
    if (!res) return;
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/lag/history: " + errText(res) })); return; }
    const v = res.body || {};
    const every = v.interval_seconds || 10, window = v.window_seconds || 3600;
    const parts = (v.partitions || []).filter((p) => Array.isArray(p.samples) && p.samples.length);
    if (parts.length === 0) {
      fill(box, emptyNote("lag-history", "no lag history yet: the daemon samples its partitions every " + fmtDuration(every) +
        " and keeps the last " + spanText(window)));
      return;
    }
    const at = parseTime(v.at);
    // The axis spans the window, or less while the history is younger than
    // it (at least 5 minutes): a daemon started a minute ago would
    // otherwise draw its lines in the last sliver of an hour.
    const to = at ? at.getTime() : Date.now();
    let oldest = to;
    for (const p of parts) oldest = Math.min(oldest, parseTime(p.samples[0].time).getTime());
    const from = Math.max(to - window * 1000, Math.min(oldest - every * 1000, to - 5 * 60 * 1000));
    const sampled = (to - oldest) / 1000; // how long the daemon has sampled, up to the window
    let worstNow = null, worstEver = null;
    const series = parts.map((p, i) => {
      const key = p.topic + "/" + p.partition;
      const points = p.samples.map((x) => ({ t: parseTime(x.time).getTime(), v: Math.max(0, x.seconds_behind || 0) }));
      const last = p.samples[p.samples.length - 1];
      const peak = points.reduce((m, x) => Math.max(m, x.v), 0);
      if (!worstNow || (last.seconds_behind || 0) > worstNow.v) worstNow = { key, v: last.seconds_behind || 0 };
      if (!worstEver || peak > worstEver.v) worstEver = { key, v: peak };
      const now = fmtDuration(last.seconds_behind || 0) + " behind now (" + fmtInt(last.records_behind) + " records" + (last.paused ? ", paused" : "") + ")";
      return Object.assign(charts.style(i), {
        key, points, gap: 2.5 * every * 1000, now, peak,
        title: key + ": " + now + ", at most " + fmtDuration(peak) + " in the last " + spanText(window),
      });
    });
    const svg = charts.timeChart({
      name: "lag", title: "seconds behind per partition over the last " + spanText(window),
      from, to, width: chartWidth(box), height: 220, yLabel: "seconds behind", yFormat: shortDuration, series,
    });
    const legend = el("ul", { class: "chart-legend", "aria-label": "partitions" }, series.map((x) =>
      el("li", { "data-legend": x.key, title: x.title }, charts.swatch(x), el("span", { class: "mono", text: x.key }),
        el("span", { class: "muted", text: x.now + " · max " + fmtDuration(x.peak) }))));
    const note = el("p", { class: "chart-note", "data-chart-note": "lag" },
      fmtInt(series.length) + " partitions · one sample every " + fmtDuration(every) +
      (sampled < window - every ? " · sampled for " + fmtDuration(sampled) + " so far (the chart keeps " + spanText(window) + ")" : "") +
      " · worst now " + worstNow.key + " " + fmtDuration(worstNow.v) +
      " · worst in the last " + (sampled < window - every ? fmtDuration(sampled) : spanText(window)) + " " + worstEver.key + " " + fmtDuration(worstEver.v) +
      (v.untracked ? " · " + fmtInt(v.untracked) + " more partitions are not kept (the daemon keeps " + fmtInt(v.max_partitions) + ")" : ""));
    fill(box, svg, legend, note);
  }

  // ---- capture and backfill ------------------------------------------------

  // parseMetrics reads the Prometheus text format: name{labels} value.
  function parseMetrics(text) {
    const out = [];
    if (typeof text !== "string") return out;
    for (const line of text.split("\n")) {
      if (!line.startsWith("tidemark_capture_")) continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      for (const lm of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function renderCapture(st, metrics) {
    const body = $("capture-rows");
    const roles = st.ok ? st.body.roles || [] : [];
    if (st.ok && !roles.includes("capture")) {
      fill(body, emptyRow(6, "this daemon does not run the capture role"));
      return;
    }
    if (!metrics.ok) {
      fill(body, emptyRow(6, "cannot read /metrics: " + errText(metrics)));
      return;
    }
    const ns = new Map();
    const at = (n) => { if (!ns.has(n)) ns.set(n, { events: 0 }); return ns.get(n); };
    for (const m of parseMetrics(metrics.body)) {
      const n = m.labels.namespace;
      if (!n) continue;
      const r = at(n);
      switch (m.name) {
        case "tidemark_capture_events_total": r.events += m.value; break;
        case "tidemark_capture_source_cluster_time_seconds": r.source = m.value; break;
        case "tidemark_capture_produced_cluster_time_seconds": r.produced = m.value; break;
        case "tidemark_capture_checkpoint_timestamp_seconds": r.checkpoint = m.value; break;
        case "tidemark_capture_history_lost": r.lost = m.value > 0; break;
      }
    }
    if (ns.size === 0) {
      fill(body, emptyRow(6, "no change stream has reported yet"));
      return;
    }
    fill(body, [...ns.keys()].sort().map((n) => {
      const r = ns.get(n);
      let state;
      if (r.lost) state = badge("history lost — see runbook", "bad");
      else if (!r.source) state = badge("waiting for events", "");
      else if (r.produced && r.source - r.produced > 5) state = badge("behind source by " + fmtDuration(r.source - r.produced), "warn");
      else state = badge("streaming", "good");
      return el("tr", { "data-ns": n },
        el("td", { class: "mono", text: n }), el("td", {}, state),
        el("td", { class: "num", text: fmtInt(r.events) }),
        timeCell(r.source), timeCell(r.produced), timeCell(r.checkpoint));
    }));
  }

  function renderBackfill(st) {
    const body = $("backfill-rows");
    if (!st.ok) { fill(body, emptyRow(5, "cannot read /v1/status: " + errText(st))); return; }
    const bf = st.body.backfill || {};
    const names = Object.keys(bf).sort();
    if (names.length === 0) { fill(body, emptyRow(5, "no backfill recorded")); return; }
    fill(body, names.map((n) => {
      const p = bf[n];
      const est = p.estimated || 0;
      const ratio = p.done ? 1 : est > 0 ? Math.min(1, (p.docs || 0) / est) : null;
      const started = parseTime(p.started), updated = parseTime(p.updated);
      const secs = started && updated ? (updated - started) / 1000 : 0;
      const rate = secs > 0 ? (p.docs || 0) / secs : null;
      const progress = el("td", { "data-col": "progress" });
      if (ratio !== null) {
        progress.append(el("progress", { max: 1, value: ratio.toFixed(4), "aria-label": n + " backfill" }), (100 * ratio).toFixed(1) + " %");
      } else {
        progress.append("size unknown");
      }
      const state = el("td", {}, p.done ? badge("done", "good") : badge("in progress", "warn"));
      state.append(el("span", { class: "muted", text: " " + fmtInt(p.chunks) + " chunks" + (rate ? ", " + fmtInt(rate) + "/s" : "") }));
      if (!p.done && rate && est > p.docs) state.append(el("span", { class: "muted", text: ", about " + fmtDuration((est - p.docs) / rate) + " left" }));
      const docs = fmtInt(p.docs) + (est ? " / ≈" + fmtInt(est) : "");
      return el("tr", { "data-ns": n },
        el("td", { class: "mono", text: n }), progress,
        el("td", { class: "num", "data-col": "docs", text: docs }),
        state, timeCell(p.updated));
    }));
  }

  // ---- rollout plan --------------------------------------------------------
  // GET /v1/plan answers rollout.Status: the plan's stage names, the current
  // stage with its slice, and that stage's gates and triggers as evaluated.

  function sliceText(s) {
    if (s === undefined || s === null) return "";
    if (typeof s !== "object") return String(s);
    return Object.entries(s).map(([k, v]) => k + " " + (Array.isArray(v) ? v.join(", ") : v !== null && typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
  }
  function valueText(v) {
    if (v === undefined || v === null) return "—";
    if (typeof v === "number") return Number.isInteger(v) ? fmtInt(v) : String(Math.round(v * 10000) / 10000);
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  // observedText is the signal's state and, when there is one, its value.
  function observedText(o) {
    const v = o.value !== undefined && o.value !== null ? valueText(o.value) : "";
    const obs = o.observed || "";
    if (obs === "no-data") return "no data";
    return v ? v + (obs && obs !== "ok" ? " (" + obs + ")" : "") : obs || "—";
  }
  function gateWord(s) {
    return { pass: "pass", fail: "fail", pending: "pending" }[s] || s || "pending";
  }
  function triggerState(t) {
    if (t.exhausted) return ["exhausted — needs a person", "bad"];
    if (t.pending) return ["pending — " + (t.effect || "waiting for its effect"), "warn"];
    if (t.cooldown_left_seconds > 0) return ["fired, cooling down " + fmtDuration(t.cooldown_left_seconds), "bad"];
    if (t.observed === "breach") return ["breached " + fmtDuration(t.held_for_seconds || 0) + " of " + fmtDuration(t.for_seconds || 0), "warn"];
    return [t.observed === "no-data" ? "quiet (no data)" : "quiet", "good"];
  }

  function renderPlan(res) {
    const box = $("plan-body");
    if (res.status === 404) { fill(box, el("p", { class: "empty", text: "no plan configured" })); return; }
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/plan: " + errText(res) })); return; }
    const p = res.body;
    if (!p || typeof p !== "object") { fill(box, el("p", { class: "empty", text: "no plan configured" })); return; }
    const names = Array.isArray(p.stages) ? p.stages.map((x) => (x && typeof x === "object" ? pick(x, "name", "id") : x)) : [];
    const cur = typeof p.stage === "number" ? p.stage : names.indexOf(p.stage_name);
    const reverted = new Set(p.reverted || []);

    let state;
    if (p.aborted) state = badge("aborted", "bad");
    else if (p.complete) state = badge("complete", "good");
    else if (p.held) state = badge("held", "warn");
    else state = badge("running", "good");
    const head = el("p", { class: "kv", "data-plan": p.plan_version || "" },
      "plan ", el("b", { text: p.plan_version || "unnamed" }), " ", state,
      p.dry_run ? [" ", badge("dry run: decisions are only audited", "warn")] : "",
      p.soft_rollback ? [" ", badge("soft rollback: slice reads go to legacy", "bad")] : "",
      p.evaluated ? el("span", { text: " · evaluated " + ago(p.evaluated) }) : "");
    const notes = [];
    if (p.held) notes.push(el("p", { class: "kv" }, badge("held", "warn"), " " + p.held));
    if (p.last_error) notes.push(el("p", { class: "kv" }, badge("evaluation error", "bad"), " " + p.last_error));
    if ((p.paused_by_rollout || []).length) {
      notes.push(el("p", { class: "kv", text: "partitions paused by the rollout: " + p.paused_by_rollout.map((x) => x.topic + "/" + x.partition).join(", ") }));
    }

    const list = el("ol", { class: "stages" }, names.map((name, i) => {
      let st, cls;
      if (reverted.has(name)) { st = "reverted"; cls = "bad"; }
      else if (p.complete || i < cur) { st = "done"; cls = "good"; }
      else if (i === cur) { st = "current"; cls = ""; }
      else { st = "pending"; cls = "warn"; }
      const item = el("li", { class: "stage " + (i === cur && !p.complete ? "current" : cls), "data-stage": name },
        el("div", { class: "stage-head" }, el("span", { class: "name", text: (i + 1) + ". " + name }), badge(st, cls),
          i === cur && p.stage_since ? el("span", { class: "kv", text: "since " + ago(p.stage_since) }) : ""));
      if (i !== cur) return item;
      const facts = [];
      if (p.slice) facts.push("slice: " + sliceText(p.slice));
      if (p.reads) facts.push("reads: " + p.reads);
      if (p.advance) facts.push("advance: " + p.advance);
      if (facts.length) item.append(el("p", { class: "kv", text: facts.join(" · ") }));
      const gates = p.gates || [];
      item.append(gates.length ? el("table", { class: "data" },
        el("caption", { class: "sr", text: "gates of stage " + name }),
        el("thead", {}, el("tr", {}, ["gate", "state", "observed", "bound", "held / window"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, gates.map((g) => el("tr", { "data-gate": g.name || g.signal || "" },
          el("td", {}, g.name || g.signal || "gate", g.signal && g.name !== g.signal ? el("span", { class: "muted", text: " " + g.signal }) : ""),
          el("td", { "data-col": "state" }, badge(gateWord(g.state))),
          el("td", { class: "num", "data-col": "observed", text: observedText(g) }),
          el("td", { class: "num", text: g.threshold || "—" }),
          el("td", { class: "num", text: fmtDuration(g.held_for_seconds || 0) + " / " + fmtDuration(g.window_seconds || 0) })))))
        : el("p", { class: "empty", text: "this stage has no gates" }));
      const trig = p.triggers || [];
      if (trig.length) {
        item.append(el("table", { class: "data" },
          el("caption", { class: "sr", text: "triggers of stage " + name }),
          el("thead", {}, el("tr", {}, ["trigger", "when", "action", "state", "firings"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, trig.map((t) => {
            const [ts, tc] = triggerState(t);
            return el("tr", { "data-trigger": t.name || t.signal || "" },
              el("td", { text: t.name || t.signal || "trigger" }),
              el("td", { title: "observed: " + observedText(t), text: (t.signal || "") + " " + (t.condition || "") + " for " + fmtDuration(t.for_seconds || 0) }),
              el("td", { text: t.action || "" }),
              el("td", { "data-col": "state" }, badge(ts, tc)),
              el("td", { class: "num", title: [t.last_fired ? "last fired " + fmtTime(t.last_fired) + " UTC" : "",
                t.fired_on ? "on " + t.fired_on : "", t.judged ? "judged by " + t.judged : ""].filter(Boolean).join("; "),
                text: (t.attempts || 0) + " / " + (t.max_attempts || "∞") }));
          }))));
      }
      return item;
    }));
    fill(box, head, notes, names.length ? list : el("p", { class: "empty", text: "the plan has no stages" }), rawDetails("raw plan JSON", p));
  }

  // ---- reconcile -----------------------------------------------------------
  // GET /v1/reports/latest answers reconcile reports (one, a list, or
  // {reports: [...]}); a checkpoints.RoundSummary is read as well.

  const CLASSES = ["missing", "extra", "different", "stale"];

  function reportsOf(body) {
    if (!body || typeof body !== "object") return [];
    if (Array.isArray(body)) return body;
    if (Array.isArray(body.reports)) return body.reports;
    if (body.id !== undefined || body.scope !== undefined || body.rows_compared !== undefined) return [body];
    return Object.entries(body).filter(([, v]) => v && typeof v === "object").map(([k, v]) => Object.assign({ scope: k }, v));
  }
  // scopeText reads reconcile.Scope: a namespace, optionally one table, a
  // token range or a list of ids.
  function scopeText(s) {
    if (s === undefined || s === null || s === "") return "all";
    if (typeof s !== "object") return String(s);
    let t = s.namespace || "";
    if (s.table) t += (t ? " → " : "") + s.table;
    if (s.min_token !== undefined || s.max_token !== undefined) t += " tokens [" + (s.min_token ?? "min") + ", " + (s.max_token ?? "max") + "]";
    if (Array.isArray(s.ids) && s.ids.length) t += " (" + s.ids.length + " ids)";
    return t || JSON.stringify(s);
  }
  function countsOf(r) {
    const c = Object.assign({}, r.by_class || {}, r.counts || {});
    const divergent = r.divergent !== undefined && typeof r.divergent === "number" ? r.divergent : CLASSES.reduce((n, k) => n + (c[k] || 0), 0);
    const inFlight = r.in_flight !== undefined ? r.in_flight : c.in_flight || 0;
    return { c, divergent, inFlight };
  }
  // bucketsOf reads a bucket list [{id, divergent}] (or plain counts) into
  // display cells. A sparse list (only divergent leaves) is spread over all
  // 2^bits leaves when the report gives bucket_bits; more than MAX_CELLS
  // leaves are summed into MAX_CELLS cells of consecutive leaves.
  const MAX_CELLS = 256;
  function bucketsOf(x, bits) {
    const b = pick(x, "buckets", "bucket_divergence", "heatmap");
    if (!Array.isArray(b)) return null;
    const list = b.map((v, i) => typeof v === "number" ? { id: i, divergent: v } : { id: Number(pick(v, "id", "bucket", "leaf", "index") ?? i), divergent: Number(pick(v, "divergent", "count", "diverged") || 0) });
    const maxID = list.reduce((m, v) => Math.max(m, v.id), -1);
    const total = bits > 0 && bits <= 24 ? Math.max(2 ** bits, maxID + 1) : Math.max(list.length, maxID + 1);
    const per = Math.ceil(total / MAX_CELLS);
    const cells = [];
    for (let i = 0; i * per < total; i++) cells.push({ id: i * per, last: Math.min(total, (i + 1) * per) - 1, divergent: 0 });
    for (const v of list) if (v.id >= 0 && v.id < total) cells[Math.floor(v.id / per)].divergent += v.divergent;
    return cells;
  }
  function heat(n, max) {
    if (n <= 0 || max <= 0) return null;
    const f = Math.log1p(n) / Math.log1p(max);
    return "hsl(2, 70%, " + Math.round(62 - 30 * f) + "%)";
  }

  // heatScale is the heat-map's colour key: up to five swatches from 1 to
  // the map's largest count, on the same log scale as the cells.
  function heatScale(max) {
    const steps = [];
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const n = Math.max(1, Math.round(Math.expm1(f * Math.log1p(max))));
      if (!steps.includes(n) && n <= max) steps.push(n);
    }
    return el("span", { class: "scale", "aria-label": "colour scale, divergent keys" }, "divergent keys ", steps.map((n) => {
      const i = el("i", { "data-scale": n, title: fmtInt(n) + " divergent", text: fmtInt(n) });
      i.style.background = heat(n, max);
      return i;
    }));
  }

  function heatMap(label, buckets) {
    const total = buckets.length;
    const max = buckets.reduce((m, b) => Math.max(m, b.divergent), 0);
    const hot = buckets.filter((b) => b.divergent > 0).sort((a, b) => b.divergent - a.divergent);
    const cols = total > 64 ? 32 : 16;
    const rows = [];
    for (let i = 0; i < total; i += cols) {
      const tr = el("tr", {}, el("th", { scope: "row", text: String(buckets[i].id) }));
      for (let j = i; j < i + cols; j++) {
        const b = buckets[j];
        if (!b) { tr.append(el("td", { class: "none" })); continue; }
        const name = b.last !== undefined && b.last > b.id ? "buckets " + b.id + "–" + b.last : "bucket " + b.id;
        const td = el("td", { title: name + ": " + b.divergent + " divergent", "data-bucket": label + "/" + b.id, text: b.divergent > 0 ? String(b.divergent) : "·" });
        const c = heat(b.divergent, max);
        if (c) { td.className = "hot"; td.style.background = c; }
        tr.append(td);
      }
      rows.push(tr);
    }
    const leaves = buckets.length ? (buckets[buckets.length - 1].last ?? buckets[buckets.length - 1].id) + 1 : 0;
    const grouped = leaves > total ? " (each cell sums " + Math.ceil(leaves / total) + " buckets)" : "";
    const caption = (hot.length === 0 ? "all " + leaves + " buckets agree" : hot.length + " of " + total + " cells hold divergent keys") + grouped;
    // A clean map says so in words; a grid of blanks would only take room.
    if (hot.length === 0) return el("p", { class: "kv heatwrap", text: "Divergence by bucket" + (label ? " (" + label + ")" : "") + ": all " + leaves + " buckets agree" });
    return el("div", { class: "heatwrap" },
      el("table", { class: "heat" }, el("caption", { class: "kv", text: "Divergence by bucket" + (label ? " (" + label + ")" : "") + ": " + caption }), el("tbody", {}, rows)),
      el("div", { class: "legend", "data-legend": "heat" },
        heatScale(max),
        el("span", { text: "number = divergent keys in the cell, darker = more; · = none; hover a cell for its bucket" }),
        hot.length ? el("span", { text: "most divergent: " + hot.slice(0, 5).map((b) => (b.last > b.id ? "buckets " + b.id + "–" + b.last : "bucket " + b.id) + " (" + b.divergent + ")").join(", ") }) : ""));
  }

  function tablesTable(tables) {
    const cols = [["table", "table"], ["rows_source", "source rows"], ["rows_target", "target rows"], ["bucket_mismatches", "differing buckets"],
      ["missing", "missing"], ["extra", "extra"], ["different", "different"], ["stale", "stale"], ["in_flight", "in flight"]];
    return el("table", { class: "data" },
      el("caption", { class: "sr", text: "per table" }),
      el("thead", {}, el("tr", {}, cols.map(([, h], i) => el("th", { scope: "col", class: i ? "num" : "", text: h })))),
      el("tbody", {}, tables.map((t) => el("tr", { "data-table": t.table || "" }, cols.map(([k], i) => {
        if (i === 0) return el("td", { class: "mono", text: t.table || "" });
        const v = t[k] || 0;
        const bad = ["missing", "extra", "different", "stale"].includes(k) && v > 0;
        return el("td", { class: "num", "data-col": k }, bad ? el("b", { text: fmtInt(v) }) : fmtInt(v));
      })))));
  }

  function renderReconcile(res) {
    const box = $("reconcile-body");
    if (res.status === 404) { fill(box, el("p", { class: "empty", text: "no reconcile round yet" })); return; }
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/reports/latest: " + errText(res) })); return; }
    const reports = reportsOf(res.body);
    if (reports.length === 0) { fill(box, el("p", { class: "empty", text: "no reconcile round yet" })); return; }
    fill(box, el("div", { class: "reports" }, reports.map((r) => {
      const { c, divergent, inFlight } = countsOf(r);
      const status = r.status || (r.clean === false || divergent > 0 ? "divergent" : "clean");
      let verdict;
      if (status === "clean") verdict = badge("clean", "good");
      else if (status === "divergent") verdict = badge(fmtInt(divergent) + " divergent", "bad");
      else verdict = badge(String(status), "warn");
      const start = parseTime(r.start), end = parseTime(r.end);
      const secs = r.duration_seconds !== undefined ? r.duration_seconds : start && end ? (end - start) / 1000 : null;
      const facts = el("div", { class: "facts kv" },
        r.docs_scanned !== undefined ? el("span", {}, "scanned ", el("b", { text: fmtInt(r.docs_scanned) }), " documents") : "",
        el("span", {}, "compared ", el("b", { text: fmtInt(r.rows_compared) }), " rows"),
        el("span", {}, "divergent ", el("b", { text: fmtInt(divergent) })),
        CLASSES.filter((k) => c[k] !== undefined).map((k) => el("span", {}, k + " ", el("b", { text: fmtInt(c[k]) }))),
        el("span", { title: "keys still on their way at the end of the round: re-checked later, never divergence" }, "in flight ", el("b", { text: fmtInt(inFlight) })),
        c.resolved !== undefined ? el("span", {}, "resolved on re-check ", el("b", { text: fmtInt(c.resolved) })) : "",
        r.source_errors ? el("span", {}, "untransformable ", el("b", { text: fmtInt(r.source_errors) })) : "",
        el("span", {}, "finished ", el("b", { text: end ? ago(end) : "—" }), end ? el("span", { title: fmtTime(end) + " UTC", text: " (" + fmtTime(end) + ")" }) : ""),
        secs !== null ? el("span", {}, "took ", el("b", { text: fmtDuration(secs) })) : "",
        r.spec_version ? el("span", {}, "spec ", el("b", { text: r.spec_version })) : "");
      const parts = [];
      if (r.error) parts.push(el("p", { class: "kv" }, badge("error", "bad"), " " + r.error));
      if (r.truncated) parts.push(el("p", { class: "kv" }, badge("truncated", "warn"), " more candidate keys than max_candidates; counts are lower bounds"));
      const tables = Array.isArray(r.tables) ? r.tables : [];
      if (tables.length) parts.push(tablesTable(tables));
      let maps = 0;
      const top = bucketsOf(r, r.bucket_bits);
      if (top && top.length) { parts.push(heatMap("", top)); maps++; }
      for (const t of tables) {
        // A report leaves out a table's bucket list when no bucket holds a
        // divergent key: with bucket_bits known, that is a clean map.
        const b = bucketsOf(t, r.bucket_bits) || (r.bucket_bits > 0 && t.buckets === undefined ? bucketsOf({ buckets: [] }, r.bucket_bits) : null);
        if (b && b.length) { parts.push(heatMap(t.table || "", b)); maps++; }
      }
      if (!maps) parts.push(el("p", { class: "empty", text: "this report has no per-bucket figures for a heat-map" }));
      const sample = Array.isArray(r.sample) ? r.sample : [];
      if (sample.length) {
        parts.push(el("p", { class: "kv" }, "sample: ", sample.slice(0, 6).map((k, i) => [i ? " · " : "",
          el("span", { class: "mono", text: typeof k === "object" ? [k.class, k.table, k.source_id || (k.primary_key ? JSON.stringify(k.primary_key) : ""), (k.columns || []).join(",")].filter(Boolean).join(" ") : String(k) })])));
      }
      return el("article", { class: "report", "data-report": r.id || "" },
        el("h3", {}, el("span", { class: "mono", text: scopeText(r.scope) }), " ", verdict, r.id ? el("span", { class: "muted mono", text: " " + r.id }) : ""),
        facts, parts);
    })));
  }

  // ---- rounds over time ----------------------------------------------------
  // GET /v1/reports lists the newest 100 rounds with their counts. It reads
  // every report file, so the page asks for it only when the latest report
  // changed, not on every poll.

  let roundsFor = null, rounds = null; // the latest report ids rounds was read for

  async function readRounds(rep) {
    if (!rep.ok) return null;
    const key = reportsOf(rep.body).map((r) => r.id || "").join(",");
    if (rounds === null || !rounds.ok || key !== roundsFor) {
      rounds = await get("/v1/reports");
      roundsFor = key;
    }
    return rounds;
  }

  function renderRounds(rep, res) {
    const box = $("rounds-chart");
    if (rep.status === 404 || (res && res.status === 404)) { fill(box, emptyNote("rounds", "no reconcile round yet")); return; }
    if (!rep.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/reports/latest: " + errText(rep) })); return; }
    if (!res) return;
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/reports: " + errText(res) })); return; }
    const list = (Array.isArray(res.body) ? res.body : []).map((r) => {
      const c = r.counts || {};
      const t = parseTime(r.end) || parseTime(r.start);
      return { r, t: t ? t.getTime() : null, divergent: CLASSES.reduce((n, k) => n + (c[k] || 0), 0), inFlight: c.in_flight || 0 };
    }).filter((x) => x.t !== null).sort((a, b) => a.t - b.t);
    if (list.length === 0) { fill(box, emptyNote("rounds", "no reconcile round yet")); return; }
    // A little room either side; at least 10 minutes, the newest round at
    // the right, so a first round or two do not sit on a one-tick axis.
    const pad = Math.max((list[list.length - 1].t - list[0].t) * 0.05, 30 * 1000);
    const to = list[list.length - 1].t + pad, from = Math.min(list[0].t - pad, to - 10 * 60 * 1000);
    const point = (x, v) => ({
      t: x.t, v, key: x.r.id, hollow: x.r.status === "incomplete",
      title: "round " + x.r.id + " · " + scopeText(x.r.scope) + " · " + (x.r.status || "") + " · ended " + fmtTime(x.t / 1000) + " UTC: " +
        fmtInt(x.divergent) + " divergent, " + fmtInt(x.inFlight) + " in flight",
    });
    const series = [
      { key: "divergent", label: "divergent keys (missing, extra, different, stale)", color: "#c0392b", markers: true, points: list.map((x) => point(x, x.divergent)) },
      { key: "in_flight", label: "in flight (on their way at the end of the round; re-checked, never divergence)", color: "#b7791f", dash: "6 3", markers: true, points: list.map((x) => point(x, x.inFlight)) },
    ];
    const svg = charts.timeChart({
      name: "rounds", title: "divergent and in-flight keys of the newest " + list.length + " reconcile rounds",
      from, to, width: chartWidth(box), height: 200, yLabel: "keys", yFormat: fmtInt, integer: true, series,
    });
    const legend = el("ul", { class: "chart-legend" },
      series.map((x) => el("li", { "data-legend": x.key }, charts.swatch(x), el("span", { text: x.label }))),
      list.some((x) => x.r.status === "incomplete") ? el("li", { "data-legend": "incomplete", text: "open circle: an incomplete round (time box or cancel)" }) : "");
    const newest = list[list.length - 1];
    const note = el("p", { class: "chart-note", "data-chart-note": "rounds" },
      fmtInt(list.length) + (list.length === 100 ? " (the newest 100)" : "") + " rounds, " + fmtTime(list[0].t / 1000) + " to " + fmtTime(newest.t / 1000) +
      " UTC · newest " + newest.r.id + ": " + fmtInt(newest.divergent) + " divergent, " + fmtInt(newest.inFlight) + " in flight");
    fill(box, svg, legend, note);
  }

  // ---- audit ---------------------------------------------------------------

  function renderAudit(res) {
    const body = $("audit-rows");
    if (!res.ok) { fill(body, emptyRow(7, "cannot read /v1/audit: " + errText(res))); return; }
    const es = Array.isArray(res.body) ? res.body.slice().reverse() : [];
    if (es.length === 0) { fill(body, emptyRow(7, "no audit entries")); return; }
    fill(body, es.map((e) => {
      const d = e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : "";
      return el("tr", { "data-action": e.action },
        el("td", { class: "mono", text: fmtTime(e.time) }),
        el("td", { "data-col": "actor", text: e.actor || "" }),
        el("td", { class: "mono", "data-col": "action", text: e.action || "" }),
        el("td", { class: "mono", text: e.target || "" }),
        el("td", { "data-col": "reason", text: e.reason || "" }),
        el("td", { "data-col": "result" }, badge(e.result || "")),
        el("td", { class: "details mono", title: d, text: d }));
    }));
  }

  // The caller's name and role (GET /v1/whoami). The page only reads, which
  // a viewer may; it shows the role so an operator knows what the token can
  // do from the CLI.
  function renderWho(res) {
    const w = $("whoami");
    if (!res.ok || !res.body || typeof res.body !== "object") { w.textContent = ""; delete document.body.dataset.role; return; }
    w.textContent = res.body.role === "none" ? "no token (open status)" : res.body.name + " · role " + res.body.role;
    document.body.dataset.role = res.body.role;
  }

  // ---- polling -------------------------------------------------------------

  function authNeeded(results) {
    const denied = results.some((r) => r.status === 401);
    const form = $("auth");
    form.classList.toggle("need", denied);
    const banner = $("banner");
    if (denied) {
      $("auth-state").textContent = token() ? "token refused" : "token needed";
      banner.textContent = token()
        ? "The daemon refused this token (HTTP 401). Check it and enter it again."
        : "This daemon's read routes need a token (admin.open_status is false). Enter an API token above; it is kept in this browser tab's sessionStorage only.";
      banner.hidden = false;
    } else {
      $("auth-state").textContent = token() ? "using a token (this tab only)" : "";
      const down = results[0].status === 0;
      banner.hidden = !down;
      if (down) banner.textContent = "The daemon does not answer; showing the last values read.";
    }
  }

  // ---- trace ---------------------------------------------------------------

  // renderTrace shows GET /v1/trace: one document's journey. It runs on
  // demand (the form, or trace_ns/trace_id in the URL), not on every poll:
  // a trace scans a Kafka partition.
  function renderTrace(res) {
    const body = $("trace-body");
    if (!res.ok) { fill(body, el("p", { class: "empty", text: "cannot trace: " + errText(res) })); return; }
    const j = res.body;
    const parts = [el("p", { class: "summary", "data-trace": "state" }, badge(String(j.state || "").replace("_", " ")), " ", j.summary || "")];
    const src = j.source || {};
    parts.push(el("h3", { text: "Source" }),
      el("p", { "data-trace": "source" }, src.found ? "document, read at " + (src.read_at || "—") : "no document (read at " + (src.read_at || "—") + ")"),
      src.found ? el("pre", { class: "raw", text: src.document }) : "");
    const k = j.kafka || {};
    parts.push(el("h3", { text: "Kafka " }, el("span", { class: "muted mono", text: (k.topic || "") + " [" + k.partition + "]" })),
      el("p", { class: "muted", "data-trace": "kafka" }, "offsets " + fmtInt(k.start) + "–" + fmtInt(k.end) + " · sink committed " +
        (k.committed < 0 ? "nothing" : fmtInt(k.committed)) + " · " + fmtInt(k.scanned) + " records scanned" + (k.complete ? "" : " (scan incomplete)")),
      el("table", { class: "data" },
        el("thead", {}, el("tr", {}, ["offset", "op", "version", "written", "applied"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, (k.records || []).length === 0 ? emptyRow(5, "no record of this key in Kafka") :
          k.records.map((r) => el("tr", { "data-offset": r.offset },
            el("td", { class: "num", "data-col": "offset", text: fmtInt(r.offset) }),
            el("td", { "data-col": "op", text: r.error ? "malformed: " + r.error : r.op }),
            el("td", { class: "mono", "data-col": "version", text: r.version || "—" }),
            timeCell(r.timestamp),
            el("td", { "data-col": "applied" }, badge(r.applied ? "applied" : "pending", r.applied ? "good" : "warn")))))));
    for (const h of j.tables || []) {
      const state = h.match ? badge("matches the source", "good") : badge("differs" + ((h.columns || []).length ? " in " + h.columns.join(", ") : ""), "bad");
      parts.push(el("h3", { "data-trace-table": h.table }, el("span", { class: "mono", text: h.table }), " ", state),
        el("dl", { class: "kv" },
          el("dt", { text: "expected" }), el("dd", { class: "mono", text: h.expected ? JSON.stringify(h.expected) : "no row" }),
          el("dt", { text: "in Cassandra" }), el("dd", { class: "mono", text: h.row ? JSON.stringify(h.row.values) + " · newest write " + (h.row.version || "—") : "no row" }),
          h.key_map ? [el("dt", { text: "key map" }), el("dd", { class: "mono", text: JSON.stringify(h.key_map.primary_key) + " at " + h.key_map.version })] : "",
          h.stray ? [el("dt", { text: "old row" }), el("dd", { class: "mono", text: JSON.stringify(h.stray.values) })] : ""));
    }
    const vs = j.verdicts || [];
    parts.push(el("h3", { text: "Reconcile rounds" }), vs.length === 0 ? el("p", { class: "empty", text: "no round of this namespace yet" }) :
      el("table", { class: "data" },
        el("thead", {}, el("tr", {}, ["report", "started", "round", "this document", "table"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, vs.map((v) => el("tr", { "data-verdict": v.report },
          el("td", { class: "mono", "data-col": "report", text: v.report }), timeCell(v.start),
          el("td", { "data-col": "round" }, badge(v.status)),
          el("td", { "data-col": "class" }, badge(String(v.class).replace("_", " "))),
          el("td", { class: "mono", "data-col": "table", text: v.table || "" }))))));
    for (const p of j.problems || []) parts.push(el("p", { class: "banner", text: "could not read: " + p }));
    fill(body, parts);
  }

  async function runTrace(ns, id) {
    fill($("trace-body"), el("p", { class: "empty", text: "tracing…" }));
    renderTrace(await get("/v1/trace?namespace=" + encodeURIComponent(ns) + "&id=" + encodeURIComponent(id)));
  }

  async function poll() {
    const [hz, rz, st, plan, rep, audit, metrics, who] = await Promise.all([
      get("/healthz"), get("/readyz"), get("/v1/status"), get("/v1/plan"),
      get("/v1/reports/latest"), get("/v1/audit?limit=" + AUDIT_LIMIT), get("/metrics"), get("/v1/whoami"),
    ]);
    authNeeded([hz, st, audit]);
    renderWho(who);
    if (hz.status !== 0) {
      const [hist, roundList] = await Promise.all([readLagHistory(st), readRounds(rep)]);
      renderHealth(hz, rz, st);
      renderLag(st);
      renderLagChart(st, hist);
      renderRounds(rep, roundList);
      renderCapture(st, metrics);
      renderBackfill(st);
      renderPlan(plan);
      renderReconcile(rep);
      renderAudit(audit);
    } else {
      renderHealth(hz, rz, st);
    }
    polls++;
    $("updated").textContent = new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.polls = String(polls);
    if (st.ok) document.body.dataset.state = "ready";
    else if (st.status === 401) document.body.dataset.state = "unauthorized";
    else document.body.dataset.state = "error";
  }

  async function loop() {
    try { await poll(); } catch (e) {
      const b = $("banner");
      b.textContent = "status page error: " + e;
      b.hidden = false;
    }
    setTimeout(loop, refreshSeconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("interval").textContent = String(refreshSeconds);
    $("auth").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("token");
      setToken(input.value.trim());
      input.value = "";
      poll();
    });
    $("forget").addEventListener("click", () => { setToken(""); poll(); });
    $("trace-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      runTrace($("trace-ns").value.trim(), $("trace-id").value.trim());
    });
    if (params.get("trace_ns") && params.get("trace_id")) {
      $("trace-ns").value = params.get("trace_ns");
      $("trace-id").value = params.get("trace_id");
      runTrace(params.get("trace_ns"), params.get("trace_id"));
    }
    loop();
  });
})();
