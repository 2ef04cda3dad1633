// tidemark status page: small SVG charts, drawn here rather than by a
// charting library, so the page stays one origin, offline and a few
// kilobytes. Exposes window.tidemarkCharts.timeChart for app.js.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) if (c) e.append(c);
    return e;
  }

  // Ten colours that stay apart for the common kinds of colour blindness
  // (Okabe–Ito and Tol's), then dash patterns once they repeat: a chart of
  // 30 partitions still tells every line apart through its legend.
  const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#882255", "#117733", "#999933", "#332288"];
  const DASHES = ["", "6 3", "2 3", "8 3 2 3"];
  function style(i) {
    return { color: PALETTE[i % PALETTE.length], dash: DASHES[Math.floor(i / PALETTE.length) % DASHES.length] };
  }

  // niceStep is the 1-2-5 step that cuts range into about n parts.
  function niceStep(range, n) {
    const raw = range / n;
    const p = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
    return 10 * p;
  }
  // valueTicks runs from 0 to at least max; counts (integer) step by whole
  // numbers, so a chart of 0s and 1s is not labelled 0, 0, 0, 1.
  function valueTicks(max, integer) {
    const step = integer ? Math.max(1, niceStep(max > 0 ? max : 1, 4)) : niceStep(max > 0 ? max : 1, 4);
    const ticks = [0];
    while (ticks.length < 2 || ticks[ticks.length - 1] < max - step * 1e-9) ticks.push(ticks.length * step);
    return ticks;
  }

  // Time ticks fall on round UTC times (minutes, hours, days), so a label
  // reads as a clock time, as every time on the page is in UTC.
  const TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800].map((s) => s * 1000);
  function timeTicks(from, to, n) {
    const step = TIME_STEPS.find((s) => (to - from) / s <= n) || TIME_STEPS[TIME_STEPS.length - 1];
    const ticks = [];
    for (let t = Math.ceil(from / step) * step; t <= to; t += step) ticks.push(t);
    return { ticks, step };
  }
  function clock(ms, withDate) {
    const s = new Date(ms).toISOString();
    return withDate ? s.slice(5, 10) + " " + s.slice(11, 16) : s.slice(11, 16);
  }

  // timeChart returns an <svg> of series over time. o:
  //   name     what the chart shows (aria-label, data-chart)
  //   from,to  the time axis, ms since the epoch
  //   width, height  in CSS pixels (drawn 1:1, so text keeps its size)
  //   yLabel   the value axis' title; yFormat formats its tick labels;
  //            integer keeps its ticks whole numbers
  //   series   [{key, label, color, dash, points: [{t, v}], gap, markers}]
  //            points are joined by a line unless further apart than gap
  //            (ms); a lone point is drawn as a dot. With markers, every
  //            point is also a circle carrying data-point and a <title>
  //            (point.title); point.hollow draws it open.
  function timeChart(o) {
    const W = o.width, H = o.height;
    const m = { l: 58, r: 22, t: 10, b: 36 };
    const pw = W - m.l - m.r, ph = H - m.t - m.b;
    let max = 0;
    for (const s of o.series) for (const p of s.points) max = Math.max(max, p.v);
    const yt = valueTicks(max, o.integer);
    const top = yt[yt.length - 1];
    const x = (t) => m.l + ((t - o.from) / Math.max(1, o.to - o.from)) * pw;
    const y = (v) => m.t + ph - (v / top) * ph;
    const f1 = (n) => Math.round(n * 10) / 10;

    const root = svg("svg", { class: "chart", "data-chart": o.name, width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": o.title || o.name });
    if (o.title) root.append(svg("title", { text: o.title }));

    // Grid and value axis.
    const grid = svg("g", { class: "grid" });
    for (const v of yt) {
      grid.append(svg("line", { x1: m.l, x2: m.l + pw, y1: f1(y(v)), y2: f1(y(v)) }));
      grid.append(svg("text", { class: "tick", "data-axis": "y", x: m.l - 6, y: f1(y(v)) + 4, "text-anchor": "end", text: o.yFormat ? o.yFormat(v) : String(v) }));
    }
    const tt = timeTicks(o.from, o.to, Math.max(2, Math.floor(pw / 90)));
    const withDate = o.to - o.from > 86400000 || new Date(o.from).getUTCDate() !== new Date(o.to).getUTCDate() && tt.step >= 3600000;
    for (const t of tt.ticks) {
      grid.append(svg("line", { class: "vgrid", x1: f1(x(t)), x2: f1(x(t)), y1: m.t, y2: m.t + ph }));
      grid.append(svg("text", { class: "tick", "data-axis": "x", x: f1(x(t)), y: m.t + ph + 14, "text-anchor": "middle", text: clock(t, withDate) }));
    }
    root.append(grid,
      svg("line", { class: "axis", x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph }),
      svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph }),
      svg("text", { class: "axis-title", "data-axis-title": "x", x: m.l + pw / 2, y: H - 4, "text-anchor": "middle", text: o.xLabel || "time (UTC)" }),
      svg("text", { class: "axis-title", "data-axis-title": "y", x: 12, y: m.t + ph / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (m.t + ph / 2) + ")", text: o.yLabel || "" }));

    for (const s of o.series) {
      const pts = s.points.filter((p) => p.t >= o.from && p.t <= o.to).sort((a, b) => a.t - b.t);
      // Segments split where samples are missing (a gap wider than s.gap);
      // a segment of one point is a dot: a round cap on a stub.
      const segs = [];
      for (const p of pts) {
        const seg = segs[segs.length - 1];
        if (!seg || (s.gap && p.t - seg[seg.length - 1].t > s.gap)) segs.push([p]);
        else seg.push(p);
      }
      const d = segs.map((seg) => seg.map((p, i) => (i ? "L" : "M") + f1(x(p.t)) + " " + f1(y(p.v))).join("") + (seg.length === 1 ? "h0.01" : "")).join("");
      const g = svg("g", { class: "series", "data-series": s.key, "data-points": pts.length });
      g.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": s.width || 1.75, "stroke-dasharray": s.dash || null, "stroke-linecap": "round", "stroke-linejoin": "round" },
        s.title ? svg("title", { text: s.title }) : null));
      // A lone sample gets a dot of its own: the stub's cap is too small
      // to see.
      for (const seg of segs) {
        if (seg.length === 1 && !s.markers) g.append(svg("circle", { class: "dot", cx: f1(x(seg[0].t)), cy: f1(y(seg[0].v)), r: 2.5, fill: s.color }));
      }
      if (s.markers) {
        for (const p of pts) {
          g.append(svg("circle", { cx: f1(x(p.t)), cy: f1(y(p.v)), r: 3.5, stroke: s.color, "stroke-width": 1.5, fill: s.color,
            "data-point": p.key, class: p.hollow ? "hollow" : null }, svg("title", { text: p.title || "" })));
        }
      }
      root.append(g);
    }
    return root;
  }

  // swatch is a short line in a series' colour and dash, for a legend.
  function swatch(s) {
    return svg("svg", { class: "swatch", width: 22, height: 10, "aria-hidden": "true" },
      svg("line", { x1: 1, x2: 21, y1: 5, y2: 5, stroke: s.color, "stroke-width": 2.5, "stroke-dasharray": s.dash || null }),
      s.markers ? svg("circle", { cx: 11, cy: 5, r: 3, fill: s.color }) : null);
  }

  window.tidemarkCharts = { timeChart, swatch, style };
})();
