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
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const $ = (id) => document.getElementById(id);
  function fill(parent, ...nodes) { parent.replaceChildren(...nodes.flat()); }
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
      meter.firstChild.style.width = (maxRecs > 0 ? Math.round((100 * behind) / maxRecs) : 0) + "%";
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

  function sliceText(s) {
    if (s === undefined || s === null) return "";
    if (typeof s !== "object") return String(s);
    return Object.entries(s).map(([k, v]) => k + " " + (Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : v)).join(" · ");
  }
  function valueText(v) {
    if (v === undefined || v === null) return "—";
    if (typeof v === "number") return Number.isInteger(v) ? fmtInt(v) : String(Math.round(v * 10000) / 10000);
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }
  function gateState(g) {
    const s = pick(g, "state", "status", "result");
    if (s !== undefined) return String(s);
    if (g.passing === true || g.passed === true || g.ok === true) return "passing";
    if (g.passing === false || g.passed === false || g.ok === false) return "failing";
    return "pending";
  }
  // durText reads a duration as Go may encode it: "10m0s", seconds, or
  // nanoseconds (a bare time.Duration).
  function durText(v) {
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v === "number") return fmtDuration(v >= 1e6 ? v / 1e9 : v);
    return String(v);
  }
  function boundText(o, lo, hi) {
    const a = o[lo], b = o[hi];
    if (a !== undefined && a !== null && b !== undefined && b !== null) return valueText(a) + " … " + valueText(b);
    if (b !== undefined && b !== null) return (hi === "above" ? "> " : "≤ ") + valueText(b);
    if (a !== undefined && a !== null) return (lo === "below" ? "< " : "≥ ") + valueText(a);
    const t = pick(o, "threshold", "limit");
    return t === undefined ? "—" : valueText(t);
  }
  function triggersLine(label, triggers) {
    return el("p", { class: "kv" }, label, triggers.map((t, j) => {
      const ts = String(pick(t, "state", "status") || (t.fired ? "fired" : "armed"));
      const cond = t.signal ? " (" + t.signal + " " + boundText(t, "below", "above") + (durText(t.for) ? " for " + durText(t.for) : "") + ")" : "";
      const attempts = t.attempts !== undefined ? " · " + t.attempts + (t.max_attempts ? "/" + t.max_attempts : "") + " firings" : "";
      return el("span", { "data-trigger": pick(t, "name", "signal") || "" }, j ? " · " : "",
        el("b", { text: pick(t, "name", "signal") || "trigger" }), cond, t.action ? " → " + t.action + " " : " ", badge(ts), attempts);
    }));
  }

  function renderPlan(res) {
    const box = $("plan-body");
    if (res.status === 404) { fill(box, el("p", { class: "empty", text: "no plan configured" })); return; }
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/plan: " + errText(res) })); return; }
    const plan = res.body && res.body.plan && typeof res.body.plan === "object" ? res.body.plan : res.body;
    if (!plan || typeof plan !== "object") { fill(box, el("p", { class: "empty", text: "no plan configured" })); return; }
    const stages = plan.stages || [];
    const current = pick(plan, "current_stage", "current", "stage");
    const currentName = current !== null && typeof current === "object" ? pick(current, "name", "id") : current;
    const pstate = pick(plan, "state", "status");
    const head = el("p", { class: "kv" },
      "plan ", el("b", { text: pick(plan, "version", "name", "id") || "unnamed" }),
      pstate !== undefined ? [" · ", badge(String(pstate))] : "",
      plan.dry_run ? [" · ", badge("dry run", "warn")] : "",
      currentName !== undefined ? [" · current stage ", el("b", { text: String(currentName) })] : "",
      " · ", el("b", { text: String(stages.length) }), " stages");
    const list = el("ol", { class: "stages" }, stages.map((s, i) => {
      const name = pick(s, "name", "id") || "stage " + (i + 1);
      const isCurrent = currentName === name || currentName === i || s.current === true;
      const state = String(pick(s, "state", "status") || (isCurrent ? "current" : "pending"));
      const gates = s.gates || [];
      const triggers = s.triggers || [];
      const item = el("li", { class: "stage " + (isCurrent ? "current" : tone(state)), "data-stage": name },
        el("div", { class: "stage-head" },
          el("span", { class: "name", text: (i + 1) + ". " + name }), badge(state),
          isCurrent && !/current/i.test(state) ? badge("current", "") : "",
          s.slice !== undefined ? el("span", { class: "kv", text: "slice: " + sliceText(s.slice) }) : "",
          s.reads ? el("span", { class: "kv", text: "reads: " + s.reads }) : "",
          s.advance ? el("span", { class: "kv", text: "advance: " + s.advance }) : ""));
      if (gates.length) {
        item.append(el("table", { class: "data" },
          el("caption", { class: "sr", text: "gates of stage " + name }),
          el("thead", {}, el("tr", {}, ["gate", "state", "observed", "bound", "window", "detail"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, gates.map((g) => {
            const gname = pick(g, "name", "signal", "kind", "type") || "gate";
            const held = durText(pick(g, "held_for", "held"));
            const win = durText(pick(g, "window", "hold"));
            return el("tr", { "data-gate": gname },
              el("td", {}, gname, g.signal && g.name ? el("span", { class: "muted", text: " " + g.signal }) : ""),
              el("td", { "data-col": "state" }, badge(gateState(g))),
              el("td", { class: "num", "data-col": "value", text: valueText(pick(g, "value", "observed", "current", "actual")) }),
              el("td", { class: "num", text: boundText(g, "min", "max") }),
              el("td", { text: (win || "—") + (held ? " (held " + held + ")" : "") }),
              el("td", { class: "muted", text: short(pick(g, "detail", "reason", "message") || "", 80) }));
          }))));
      }
      if (triggers.length) item.append(triggersLine("triggers: ", triggers));
      return item;
    }));
    fill(box, head, stages.length ? list : el("p", { class: "empty", text: "the plan has no stages" }),
      (plan.triggers || []).length ? triggersLine("plan-wide triggers: ", plan.triggers) : "",
      rawDetails("raw plan JSON", plan));
  }

  // ---- reconcile -----------------------------------------------------------

  // Reports may come as one report, a list, {reports: [...]} or {scope: report}.
  function reportsOf(body) {
    if (!body || typeof body !== "object") return [];
    if (Array.isArray(body)) return body;
    if (Array.isArray(body.reports)) return body.reports;
    if (body.id !== undefined || body.scope !== undefined || body.rows_compared !== undefined) return [body];
    return Object.entries(body).filter(([, v]) => v && typeof v === "object").map(([k, v]) => Object.assign({ scope: k }, v));
  }
  function bucketsOf(r) {
    const b = pick(r, "buckets", "bucket_divergence", "heatmap");
    if (!Array.isArray(b)) return null;
    return b.map((x, i) => typeof x === "number" ? { id: i, divergent: x } : { id: pick(x, "id", "bucket", "index") ?? i, divergent: Number(pick(x, "divergent", "count", "diverged") || 0) });
  }
  function heat(n, max) {
    if (n <= 0 || max <= 0) return null;
    const f = Math.log1p(n) / Math.log1p(max);
    return "hsl(2, 70%, " + Math.round(62 - 30 * f) + "%)";
  }

  function heatMap(r, buckets) {
    const total = buckets.length;
    const max = buckets.reduce((m, b) => Math.max(m, b.divergent), 0);
    const hot = buckets.filter((b) => b.divergent > 0).sort((a, b) => b.divergent - a.divergent);
    const cols = total > 256 ? 32 : 16;
    const rows = [];
    for (let i = 0; i < total; i += cols) {
      const tr = el("tr", {}, el("th", { scope: "row", text: String(buckets[i].id) }));
      for (let j = i; j < i + cols; j++) {
        const b = buckets[j];
        if (!b) { tr.append(el("td", { class: "none" })); continue; }
        const td = el("td", { title: "bucket " + b.id + ": " + b.divergent + " divergent", "data-bucket": b.id, text: b.divergent > 0 ? String(b.divergent) : "·" });
        const c = heat(b.divergent, max);
        if (c) { td.className = "hot"; td.style.background = c; }
        tr.append(td);
      }
      rows.push(tr);
    }
    const caption = hot.length === 0 ? "all " + total + " buckets agree" : hot.length + " of " + total + " buckets hold divergent keys";
    return el("div", { class: "heatwrap" },
      el("table", { class: "heat" }, el("caption", { class: "kv", text: "Divergence by bucket: " + caption }), el("tbody", {}, rows)),
      el("div", { class: "legend" },
        el("span", { text: "number = divergent keys in the bucket, darker = more; · = none" }),
        hot.length ? el("span", { text: "most divergent: " + hot.slice(0, 5).map((b) => "bucket " + b.id + " (" + b.divergent + ")").join(", ") }) : ""));
  }

  function renderReconcile(res) {
    const box = $("reconcile-body");
    if (res.status === 404) { fill(box, el("p", { class: "empty", text: "no reconcile round yet" })); return; }
    if (!res.ok) { fill(box, el("p", { class: "empty", text: "cannot read /v1/reports/latest: " + errText(res) })); return; }
    const reports = reportsOf(res.body);
    if (reports.length === 0) { fill(box, el("p", { class: "empty", text: "no reconcile round yet" })); return; }
    fill(box, el("div", { class: "reports" }, reports.map((r) => {
      const divergent = Number(r.divergent || 0);
      const clean = r.clean !== undefined ? !!r.clean : divergent === 0;
      const start = parseTime(r.start), end = parseTime(r.end);
      const byClass = r.by_class || {};
      const facts = el("div", { class: "facts kv" },
        el("span", {}, "compared ", el("b", { text: fmtInt(r.rows_compared) }), " rows"),
        el("span", {}, "divergent ", el("b", { text: fmtInt(divergent) })),
        el("span", {}, "in flight ", el("b", { text: fmtInt(r.in_flight) }), " (re-checked later, not divergence)"),
        Object.keys(byClass).sort().map((k) => el("span", {}, k + " ", el("b", { text: fmtInt(byClass[k]) }))),
        el("span", {}, "finished ", el("b", { text: fmtTime(end) }), end ? " (" + ago(end) + ")" : ""),
        start && end ? el("span", {}, "took ", el("b", { text: fmtDuration((end - start) / 1000) })) : "");
      const buckets = bucketsOf(r);
      const sample = pick(r, "sample", "samples", "sample_keys");
      return el("article", { class: "report", "data-report": r.id || r.scope || "" },
        el("h3", {}, el("span", { class: "mono", text: r.scope || "all" }), " ",
          clean ? badge("clean", "good") : badge(fmtInt(divergent) + " divergent", "bad"),
          r.id ? el("span", { class: "muted mono", text: " " + r.id }) : ""),
        facts,
        buckets && buckets.length ? heatMap(r, buckets) : el("p", { class: "empty", text: "this report has no per-bucket figures" }),
        Array.isArray(sample) && sample.length ? el("p", { class: "kv" }, "sample: ", el("span", { class: "mono", text: sample.slice(0, 8).map((s) => short(s, 60)).join("  ") })) : "");
    })));
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

  async function poll() {
    const [hz, rz, st, plan, rep, audit, metrics] = await Promise.all([
      get("/healthz"), get("/readyz"), get("/v1/status"), get("/v1/plan"),
      get("/v1/reports/latest"), get("/v1/audit?limit=" + AUDIT_LIMIT), get("/metrics"),
    ]);
    authNeeded([hz, st, audit]);
    if (hz.status !== 0) {
      renderHealth(hz, rz, st);
      renderLag(st);
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
    loop();
  });
})();
