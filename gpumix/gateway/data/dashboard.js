// gpumix live dashboard: written for gpumix, no framework, no network access beyond this gateway.
// Data: GET /api/status (latest snapshot + history) once, then server-sent events from /api/events.
// Every value from the server is put into the page with textContent / attributes, never as HTML.
(function () {
  "use strict";
  var MAX_POINTS = 300;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var history = [];
  var latest = null;
  var lastUpdate = 0;
  var intervalS = 2;
  var source = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    });
    return node;
  }

  function svgEl(tag, attrs, tip) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    if (tip) {
      var t = document.createElementNS(SVG_NS, "title");
      t.textContent = tip;
      node.appendChild(t);
    }
    return node;
  }

  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] !== null && attrs[k] !== undefined) { node.setAttribute(k, String(attrs[k])); }
    });
  }

  function num(v, digits, unit) {
    if (v === null || v === undefined || isNaN(v)) { return "–"; }
    return Number(v).toLocaleString("en-GB", { maximumFractionDigits: digits, minimumFractionDigits: digits }) + (unit || "");
  }

  function gib(bytes) { return bytes === null || bytes === undefined ? "–" : num(bytes / 1073741824, 2, " GiB"); }

  function gbp(v, digits) { return v === null || v === undefined ? "–" : "£" + num(v, digits === undefined ? 2 : digits); }

  function duration(s) {
    if (s === null || s === undefined) { return "–"; }
    if (s < 120) { return Math.round(s) + " s"; }
    if (s < 7200) { return Math.round(s / 60) + " min"; }
    return num(s / 3600, 1, " h");
  }

  function replace(node, children) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
    children.forEach(function (c) { node.appendChild(c); });
  }

  // ---- views ----------------------------------------------------------------------------------------------
  function tile(big, small, cls, key) {
    return el("div", { "class": "tile " + (cls || ""), "data-kpi": key }, [el("b", {}, [big]), el("span", {}, [small])]);
  }

  function renderKpis(s) {
    var t = s.totals, c = s.cost;
    var tiles = [
      tile(t.healthy + "/" + t.services, "services healthy", t.healthy === t.services ? "ok" : "bad", "healthy"),
      tile(num(t.requests_per_s, 2), "requests/s", "", "rps"),
      tile(num(t.p50_ms, 0) + " / " + num(t.p99_ms, 0), "p50 / p99 ms (last 60 s)", "", "latency"),
      tile(num(t.tokens_per_s, 1) + " / " + num(t.predicted_tokens_per_s, 0), "tokens/s measured / plan capacity", "", "tps"),
      tile(String(t.outstanding), "requests outstanding", "", "outstanding"),
      tile(gbp(c.rent_so_far_gbp, 2), "spent so far at " + gbp(c.gbp_per_month, 0) + "/month", "", "spent"),
      tile(gbp(c.actual_gbp_per_million_tokens, 2) + " / " + gbp(c.planned_gbp_per_million_tokens, 2),
           "£ per M tokens: actual / planned", "", "gbp-per-m")
    ];
    replace($("kpis"), tiles);
  }

  function memoryBar(d) {
    var w = 280, h = 16;
    var total = d.memory_total_bytes || 1;
    var used = d.memory_used_bytes;
    var svg = svgEl("svg", { viewBox: "0 0 " + w + " " + (h + 2), "class": "membar" });
    svg.appendChild(svgEl("rect", { x: 0, y: 1, width: w, height: h, fill: "#eef1f4", stroke: "#bbb" }, "total " + gib(total)));
    if (used !== null && used !== undefined) {
      var over = used > total;
      svg.appendChild(svgEl("rect", { x: 0, y: 1, width: Math.min(used / total, 1) * w, height: h,
        fill: over ? "#d62728" : "#3b6ea8", "class": "used" }, "used " + gib(used) + " (" + d.source + ")"));
    }
    if (d.memory_planned_bytes) {
      var x = Math.min(d.memory_planned_bytes / total, 1) * w;
      svg.appendChild(svgEl("rect", { x: x - 1.5, y: 0, width: 3, height: h + 2, fill: "#000", "class": "planned" },
        "planned " + gib(d.memory_planned_bytes)));
    }
    return svg;
  }

  function renderCards(s) {
    var cards = s.devices.map(function (d) {
      var util = d.utilisation_pct === null || d.utilisation_pct === undefined ? "–" : num(d.utilisation_pct, 0, "%");
      return el("div", { "class": "card", "data-device": d.id }, [
        el("h3", {}, [d.id + " " + (d.name || "")]),
        memoryBar(d),
        el("div", { "class": "meta" }, [
          "used " + gib(d.memory_used_bytes) + " · planned " + gib(d.memory_planned_bytes) + " · total " +
            gib(d.memory_total_bytes) + " · utilisation " + util + " · " + d.source
        ])
      ]);
    });
    if (!cards.length) { cards = [el("p", { "class": "small" }, ["no plan: the gateway was started without --plan"])]; }
    replace($("cards"), cards);
  }

  function renderServices(s) {
    var rows = s.services.map(function (svc) {
      var procs = svc.processes.length ? svc.processes.map(function (p) {
        return p.name + ": " + p.state + (p.pid ? " (pid " + p.pid + ")" : "") + (p.last_error && p.state !== "healthy" ? " — " + p.last_error : "");
      }).join("; ") : "not supervised here";
      var up = svc.backends.filter(function (b) { return b.up; }).length;
      return el("tr", { "data-service": svc.name }, [
        el("th", {}, [svc.name]),
        el("td", {}, [el("span", { "class": "badge health", "data-health": svc.health }, [svc.health])]),
        el("td", { "class": "small" }, [procs]),
        el("td", { "class": "num restarts" }, [String(svc.restarts)]),
        el("td", { "class": "num" }, [duration(svc.uptime_s)]),
        el("td", { "class": "num" }, [num(svc.requests_per_s, 2)]),
        el("td", { "class": "num" }, [num(svc.p50_ms, 0) + " / " + num(svc.p99_ms, 0)]),
        el("td", { "class": "num" }, [num(svc.tokens_per_s, 1) + " / " + num(svc.predicted_tokens_per_s, 1)]),
        el("td", { "class": "num" }, [String(svc.outstanding)]),
        el("td", { "class": "num" }, [up + "/" + svc.backends.length])
      ]);
    });
    replace(document.querySelector("#services tbody"), rows);
  }

  function renderAdvice(s) {
    var items = s.advice.map(function (a) { return el("li", {}, [a]); });
    if (!items.length) { items = [el("li", { "class": "small" }, ["none: no split is out of balance"])]; }
    replace($("advice"), items);
  }

  var PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F3C8D", "#11A579"];

  // One small line chart: `series` = [{label, values: [number|null], colour, dash}] over the shared history.
  function chart(key, heading, series, unit) {
    var w = 300, h = 90, pad = 4;
    var max = 0;
    series.forEach(function (s) { s.values.forEach(function (v) { if (v !== null && v !== undefined && v > max) { max = v; } }); });
    max = max > 0 ? max * 1.15 : 1;
    var svg = svgEl("svg", { viewBox: "0 0 " + w + " " + h, "data-chart": key });
    svg.appendChild(svgEl("rect", { x: 0, y: 0, width: w, height: h, fill: "#fbfcfd", stroke: "#eee" }));
    series.forEach(function (s) {
      var d = "", pen = false, n = s.values.length;
      s.values.forEach(function (v, i) {
        if (v === null || v === undefined) { pen = false; return; }
        var x = n > 1 ? pad + (w - 2 * pad) * i / (n - 1) : w / 2;
        var y = h - pad - (h - 2 * pad) * v / max;
        d += (pen ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
        pen = true;
      });
      if (d) {
        svg.appendChild(svgEl("path", { d: d, fill: "none", stroke: s.colour, "stroke-width": 1.6,
          "stroke-dasharray": s.dash ? "4 3" : null }, s.label));
      }
    });
    var hasData = series.some(function (s) { return s.values.some(function (v) { return v !== null && v !== undefined; }); });
    svg.appendChild(svgEl("text", { x: w - 4, y: 11, "text-anchor": "end", "font-size": 9, fill: "#888" }, null)).textContent =
      hasData ? "max " + num(max / 1.15, 1) + (unit || "") : "no data yet";
    var now = series.map(function (s) {
      var v = s.values.length ? s.values[s.values.length - 1] : null;
      return (series.length > 1 ? s.label + " " : "") + num(v, 1) + (unit || "");
    }).join(" · ");
    return el("div", { "class": "chart" }, [el("span", { "class": "now" }, [now]), el("h3", {}, [heading]), svg]);
  }

  function renderCharts() {
    var pick = function (k) { return history.map(function (p) { return p[k]; }); };
    var charts = [
      chart("rps", "requests/s", [{ label: "requests/s", values: pick("rps"), colour: PALETTE[0] }]),
      chart("latency", "latency ms", [
        { label: "p50", values: pick("p50"), colour: PALETTE[2] },
        { label: "p99", values: pick("p99"), colour: PALETTE[5] }], " ms"),
      chart("tps", "tokens/s", [
        { label: "measured", values: pick("tps"), colour: PALETTE[0] },
        { label: "predicted", values: history.map(function () { return latest ? latest.totals.predicted_tokens_per_s : null; }),
          colour: "#888", dash: true }]),
      chart("outstanding", "requests outstanding", [{ label: "outstanding", values: pick("out"), colour: PALETTE[3] }]),
      chart("healthy", "services healthy", [{ label: "healthy", values: pick("healthy"), colour: PALETTE[2] }])
    ];
    var ids = latest ? latest.devices.map(function (d) { return d.id; }) : [];
    if (ids.length) {
      charts.push(chart("memory", "memory used per card (GiB)", ids.map(function (id, i) {
        return { label: id, colour: PALETTE[i % PALETTE.length], values: history.map(function (p) {
          var v = p.mem ? p.mem[id] : null; return v === null || v === undefined ? null : v / 1073741824; }) };
      })));
      charts.push(chart("util", "utilisation per card (%)", ids.map(function (id, i) {
        return { label: id, colour: PALETTE[i % PALETTE.length], values: history.map(function (p) { return p.util ? p.util[id] : null; }) };
      }), "%"));
    }
    replace($("charts"), charts);
    if (history.length > 1) {
      $("history-span").textContent = "last " + duration(history[history.length - 1].ts - history[0].ts);
    }
  }

  function setConn(state, text) {
    var c = $("conn");
    c.setAttribute("data-state", state);
    c.textContent = text;
  }

  function apply(snapshot) {
    lastUpdate = Date.now();
    if (snapshot.error) {
      $("error").hidden = false;
      $("error").textContent = snapshot.error;
      return;
    }
    $("error").hidden = true;
    latest = snapshot;
    intervalS = snapshot.interval_s || intervalS;
    var last = history.length ? history[history.length - 1].ts : 0;
    if (snapshot.ts > last) {
      var t = snapshot.totals;
      var mem = {}, util = {};
      snapshot.devices.forEach(function (d) { mem[d.id] = d.memory_used_bytes; util[d.id] = d.utilisation_pct; });
      history.push({ ts: snapshot.ts, rps: t.requests_per_s, p50: t.p50_ms, p99: t.p99_ms, tps: t.tokens_per_s,
        out: t.outstanding, healthy: t.healthy, mem: mem, util: util });
      if (history.length > MAX_POINTS) { history.splice(0, history.length - MAX_POINTS); }
    }
    if (snapshot.plan) {
      $("plan-source").textContent = (snapshot.plan.source || "plan") + " · " + snapshot.plan.services + " services on " +
        snapshot.plan.devices + " cards" + (snapshot.supervisor ? " · run dir " + snapshot.supervisor.run_dir : "");
    }
    renderKpis(snapshot);
    renderCards(snapshot);
    renderServices(snapshot);
    renderAdvice(snapshot);
    renderCharts();
    setConn("live", "live · every " + intervalS + " s");
    document.body.setAttribute("data-updates", String(Number(document.body.getAttribute("data-updates") || 0) + 1));
  }

  function connect() {
    source = new EventSource("/api/events");
    source.addEventListener("status", function (e) { apply(JSON.parse(e.data)); });
    source.onopen = function () { setConn("live", "live"); };
    source.onerror = function () {
      // EventSource reconnects by itself (the server sets `retry:`); a 401 after a restart means log in again.
      setConn("reconnecting", "gateway unreachable — retrying");
      fetch("/api/status", { credentials: "same-origin" }).then(function (r) {
        if (r.status === 401) { window.location.href = "/ui"; }
      }).catch(function () { /* the gateway is down: keep showing the last data */ });
    };
  }

  function start() {
    fetch("/api/status", { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) { window.location.href = "/ui"; return null; }
      return r.json();
    }).then(function (body) {
      if (!body) { return; }
      if (body.auth) { $("logout").hidden = false; }
      history = body.history || [];
      if (body.latest) { apply(body.latest); }
      connect();
    }).catch(function () {
      setConn("reconnecting", "gateway unreachable — retrying");
      window.setTimeout(start, 2000);
    });
  }

  window.setInterval(function () {
    if (lastUpdate && Date.now() - lastUpdate > 3000 * intervalS + 2000) {
      setConn("stale", "no update for " + Math.round((Date.now() - lastUpdate) / 1000) + " s");
    }
  }, 1000);
  start();
})();
