// The Event Service monitor: polls the read-only JSON of /api/v1/monitor and draws it (no library, no CDN).
"use strict";

(function () {
  const TOKEN_KEY = "event-service-monitor-token";
  const STATUSES = ["merged", "done", "finished", "running", "sent", "ready", "failed", "corrupted", "fatal",
    "cancelled"];
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(location.search);
  const refreshS = Math.max(1, Number(params.get("refresh")) || 5);
  const dagParam = params.get("dag");
  const runParam = params.get("run");
  const taskName = params.get("task") || (dagParam && dagParam.startsWith("es_") ? dagParam.slice(3) : null);
  const api = new URL("../api/v1/monitor/", location.href);
  // Inside Airflow the page is served at <airflow>/event-service/monitor/: links lead back to Airflow's UI.
  const inAirflow = location.pathname.match(/^(.*\/)event-service\/monitor\/[^/]*$/);
  const airflowBase = inAirflow ? inAirflow[1] : null;
  let timer = null;
  let updates = 0;

  // -- small helpers -------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    for (const c of children.flat()) if (c) el.append(c);
    return el;
  }
  const fmtInt = (n) => Number(n).toLocaleString("en-US");
  function fmtNum(x, digits) {
    if (x === null || x === undefined) return "—";
    return Number(x).toLocaleString("en-US", {maximumFractionDigits: digits, minimumFractionDigits: 0});
  }
  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return "—";
    sec = Math.round(sec);
    if (sec < 60) return sec + " s";
    const d = Math.floor(sec / 86400), hh = Math.floor(sec % 86400 / 3600), m = Math.floor(sec % 3600 / 60);
    if (d) return d + " d " + hh + " h";
    if (hh) return hh + " h " + String(m).padStart(2, "0") + " min";
    return m + " min " + String(sec % 60).padStart(2, "0") + " s";
  }
  function fmtTime(t) {
    if (t === null || t === undefined) return "—";
    return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function fmtBytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0, x = n;
    while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
    return (i ? x.toFixed(1) : String(x)) + " " + units[i];
  }
  function pageLink(query) {
    const q = new URLSearchParams(query || {});
    if (params.get("refresh")) q.set("refresh", params.get("refresh"));
    const text = q.toString();
    return "./" + (text ? "?" + text : "");
  }
  // A link into Airflow's UI. The UI shows this page in a sandboxed iframe that may not navigate the top
  // window, so a click asks Airflow's router (same origin) to go there instead.
  function airflowLink(path, text) {
    const href = airflowBase + path;
    return h("a", {href, class: "airflow", onclick: (ev) => {
      try {
        if (window.top !== window && window.top.location.origin === location.origin) {
          ev.preventDefault();
          window.top.history.pushState({}, "", href);
          window.top.dispatchEvent(new PopStateEvent("popstate"));
        }
      } catch (e) { /* not allowed: let the iframe follow the link */ }
    }}, text);
  }
  function stateBadge(state) { return h("span", {class: "badge state-" + state, text: state}); }

  // -- fetching --------------------------------------------------------------------------------------------
  class AuthNeeded extends Error {}
  async function getJSON(path) {
    const headers = {Accept: "application/json"};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const reply = await fetch(new URL(path, api), {headers, credentials: "same-origin", cache: "no-store"});
    if (reply.status === 401 || reply.status === 403) throw new AuthNeeded(reply.status);
    if (reply.status === 404) return null;
    if (!reply.ok) throw new Error("HTTP " + reply.status);
    return reply.json();
  }
  function banner(text) {
    const el = document.getElementById("banner");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // -- the progress bar ----------------------------------------------------------------------------------
  function progressBar(t) {
    const bar = h("div", {class: "bar", role: "img",
      "aria-label": STATUSES.filter((st) => t.counts[st]).map((st) => st + " " + t.counts[st]).join(", ")});
    for (const st of STATUSES) {
      const n = t.counts[st] || 0;
      if (!n) continue;
      const seg = h("span", {class: "seg st-" + st, title: st + ": " + fmtInt(n) + " ranges", "data-status": st,
        "data-count": n});
      seg.style.width = (100 * n / t.ranges) + "%";
      bar.append(seg);
    }
    return bar;
  }
  function legend(t) {
    return h("ul", {class: "legend"}, STATUSES.filter((st) => t.counts[st]).map((st) =>
      h("li", {"data-status": st}, h("span", {class: "swatch st-" + st}), st + " ",
        h("b", {class: "count", text: fmtInt(t.counts[st])}))));
  }
  function percent(t) { return t.events_total ? (100 * t.events_done / t.events_total) : 0; }
  function eventsText(t) {
    return fmtInt(t.events_done) + " / " + fmtInt(t.events_total) + " events (" + fmtNum(percent(t), 1) + " %)";
  }

  // -- charts (SVG drawn here) ---------------------------------------------------------------------------
  const W = 560, H = 200, PAD = {l: 48, r: 10, t: 10, b: 34};
  function axes(svg, ymax, xlabels, ylabel) {
    const x0 = PAD.l, y0 = H - PAD.b, y1 = PAD.t, x1 = W - PAD.r;
    svg.append(s("line", {x1: x0, y1: y0, x2: x1, y2: y0, class: "axis"}),
      s("line", {x1: x0, y1: y0, x2: x0, y2: y1, class: "axis"}));
    for (const [frac, text] of [[0, "0"], [0.5, fmtNum(ymax / 2, 2)], [1, fmtNum(ymax, 2)]]) {
      const y = y0 - frac * (y0 - y1);
      const label = s("text", {x: x0 - 4, y: y + 4, "text-anchor": "end", class: "tick"});
      label.textContent = text;
      svg.append(label, s("line", {x1: x0, y1: y, x2: x1, y2: y, class: "gridline"}));
    }
    for (const [frac, text, anchor] of xlabels) {
      const label = s("text", {x: x0 + frac * (x1 - x0), y: y0 + 14, "text-anchor": anchor, class: "tick"});
      label.textContent = text;
      svg.append(label);
    }
    const yl = s("text", {x: 12, y: (y0 + y1) / 2, class: "tick", transform: `rotate(-90 12 ${(y0 + y1) / 2})`,
      "text-anchor": "middle"});
    yl.textContent = ylabel;
    svg.append(yl);
  }
  // bars: [{value, tip, label?}]; a bar's label, when given, is written under it instead of the x labels.
  function barChart(name, bars, xlabels, ylabel, xtitle) {
    const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", "data-chart": name, role: "img"});
    const ymax = Math.max(1, ...bars.map((b) => b.value));
    const labelled = bars.length > 0 && bars.every((b) => b.label !== undefined);
    axes(svg, ymax, labelled ? [] : xlabels, ylabel);
    const x0 = PAD.l, x1 = W - PAD.r, y0 = H - PAD.b, y1 = PAD.t;
    const bw = (x1 - x0) / Math.max(1, bars.length);
    bars.forEach((b, i) => {
      const hgt = (y0 - y1) * b.value / ymax;
      const rect = s("rect", {x: x0 + i * bw + 1, y: y0 - hgt, width: Math.max(1, bw - 2), height: hgt,
        class: "barfill", "data-value": b.value});
      const tip = s("title");
      tip.textContent = b.tip;
      rect.append(tip);
      svg.append(rect);
      if (labelled) {
        const label = s("text", {x: x0 + (i + 0.5) * bw, y: y0 + 14, "text-anchor": "middle", class: "tick"});
        label.textContent = b.label;
        svg.append(label);
      }
    });
    const xt = s("text", {x: (x0 + x1) / 2, y: H - 4, "text-anchor": "middle", class: "tick"});
    xt.textContent = xtitle;
    svg.append(xt);
    return svg;
  }
  function histLabels(bins, fmt) {
    if (!bins.length) return [];
    const last = bins[bins.length - 1];
    return [[0, fmt(bins[0].low), "start"],
      [1, last.high === null ? "≥ " + fmt(last.low) : fmt(last.high), "end"]];
  }
  function rateChart(d) {
    const bars = d.rate.map((b) => ({value: b.events_per_s,
      tip: fmtTime(b.start) + ": " + fmtInt(b.events) + " events, " + fmtNum(b.events_per_s, 2) + " events/s"}));
    const labels = d.rate.length ? [[0, fmtTime(d.rate[0].start).slice(11, 16), "start"],
      [1, fmtTime(d.now).slice(11, 16), "end"]] : [];
    return barChart("rate", bars, labels, "events/s", "time (UTC), bins of " + fmtDuration(d.bin_s));
  }
  function histogram(name, bins, fmt, xtitle) {
    return barChart(name, bins.map((b) => ({value: b.count,
      tip: fmt(b.low) + (b.high === null ? " and above" : " – " + fmt(b.high)) + ": " + fmtInt(b.count) + " ranges"})),
    histLabels(bins, fmt), "ranges", xtitle);
  }
  function attemptsChart(attempts) {
    return barChart("attempts", attempts.map((a) => ({value: a.ranges, label: String(a.attempts),
      tip: a.attempts + " attempts: " + fmtInt(a.ranges) + " ranges"})),
    attempts.length ? [[0, String(attempts[0].attempts), "start"],
      [1, String(attempts[attempts.length - 1].attempts), "end"]] : [], "ranges", "attempts");
  }
  function card(title, ...body) { return h("section", {class: "card"}, h("h3", {text: title}), ...body); }

  function table(name, head, rows, empty) {
    if (!rows.length) return h("p", {class: "empty", "data-table": name, text: empty});
    return h("table", {"data-table": name}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {text: c})))),
      h("tbody", {}, rows));
  }

  // -- the task list -------------------------------------------------------------------------------------
  function renderList(data) {
    const rows = data.tasks.map((t) => h("tr", {"data-task": t.task, "data-events-done": t.events_done,
      "data-events-total": t.events_total, "data-state": t.state},
    h("td", {}, h("a", {href: pageLink({task: t.task}), class: "task-link", text: t.task})),
    h("td", {}, stateBadge(t.state)),
    h("td", {class: "progress"}, progressBar(t), h("div", {class: "events", text: eventsText(t)})),
    h("td", {class: "num rate", text: fmtNum(t.events_per_s, 1)}),
    h("td", {class: "num eta", text: fmtDuration(t.eta_s)}),
    h("td", {class: "num workers", text: fmtInt(t.live_workers)}),
    h("td", {class: "time", text: fmtTime(t.last_activity)})));
    return h("div", {id: "task-list"},
      table("tasks", ["task", "state", "progress", "events/s", "ETA", "live workers", "last activity"], rows,
        "No tasks in the ledger yet."));
  }

  // -- the task page -------------------------------------------------------------------------------------
  function renderTask(d) {
    const t = d.summary;
    const links = [];
    if (airflowBase) {
      links.push(airflowLink("dags/" + encodeURIComponent(t.dag_id), "DAG " + t.dag_id));
      if (runParam && dagParam === t.dag_id) {
        links.push(airflowLink("dags/" + encodeURIComponent(t.dag_id) + "/runs/" + encodeURIComponent(runParam),
          "run " + runParam));
      }
    } else {
      links.push(h("span", {class: "muted", text: "DAG " + t.dag_id}));
    }
    const head = h("section", {class: "summary", "data-task": t.task, "data-events-done": t.events_done,
      "data-events-total": t.events_total, "data-state": t.state},
    h("h2", {}, t.task, " ", stateBadge(t.state)),
    h("p", {class: "links"}, links),
    progressBar(t), legend(t),
    h("dl", {class: "facts"},
      h("dt", {text: "events"}), h("dd", {class: "events", text: eventsText(t)}),
      h("dt", {text: "ranges"}), h("dd", {text: fmtInt(t.ranges)}),
      h("dt", {text: "current rate"}), h("dd", {class: "rate",
        text: fmtNum(t.events_per_s, 2) + " events/s (last " + fmtDuration(t.rate_window_s) + ")"}),
      h("dt", {text: "ETA"}), h("dd", {class: "eta", text: fmtDuration(t.eta_s)}),
      h("dt", {text: "live workers"}), h("dd", {class: "workers", text: fmtInt(t.live_workers)}),
      h("dt", {text: "failures"}), h("dd", {class: "failures", text: fmtInt(d.failures)}),
      h("dt", {text: "created"}), h("dd", {text: fmtTime(t.created_at)})));

    const eff = d.cpu_efficiency;
    const dur = d.durations;
    const charts = h("div", {class: "grid"},
      card("Events per second", rateChart(d)),
      card("Range duration (wall)", dur.ranges ? histogram("durations", dur.bins, (x) => fmtNum(x, 1) + " s",
        "seconds; mean " + fmtNum(dur.mean_s, 2) + " s over " + fmtInt(dur.ranges) + " ranges")
        : h("p", {class: "empty", text: "No finished ranges yet."})),
      card("CPU efficiency (CPU / wall) per range", eff.ranges ? histogram("efficiency", eff.bins,
        (x) => fmtNum(x, 1), "CPU / wall; overall " + fmtNum(eff.overall, 3))
        : h("p", {class: "empty", text: "No finished ranges with CPU and wall times yet."})),
      card("Attempts per range", attemptsChart(d.attempts)));

    const failures = h("div", {class: "grid"},
      card("Failures by error code", table("failures-by-code", ["error code", "failures"],
        d.failures_by_code.map((f) => h("tr", {}, h("td", {text: f.key ?? "(none)"}),
          h("td", {class: "num", text: fmtInt(f.failures)}))), "No failures.")),
      card("Failures by worker host", table("failures-by-host", ["host", "failures"],
        d.failures_by_host.map((f) => h("tr", {}, h("td", {text: f.key ?? "(unknown)"}),
          h("td", {class: "num", text: fmtInt(f.failures)}))), "No failures.")));

    const workers = card("Workers", table("workers",
      ["worker", "host", "live", "last heartbeat", "holds", "finished", "first seen"],
      d.workers.map((w) => h("tr", {"data-worker": w.worker, class: w.live ? "live" : "gone"},
        h("td", {text: w.worker}), h("td", {text: w.host ?? "—"}),
        h("td", {}, h("span", {class: "badge " + (w.live ? "live" : "gone"), text: w.live ? "live" : "gone"})),
        h("td", {text: fmtTime(w.last_heartbeat) + " (" + fmtDuration(d.now - w.last_heartbeat) + " ago)"}),
        h("td", {class: "num", text: fmtInt(w.held)}), h("td", {class: "num", text: fmtInt(w.finished)}),
        h("td", {text: fmtTime(w.first_seen)}))), "No worker has come yet."));

    const outputs = card("Merged outputs", table("outputs",
      ["file", "dataset", "events", "size", "adler32", "location", "certification", "validation", "registered"],
      d.outputs.map((o) => h("tr", {"data-file": o.file_name},
        h("td", {text: o.file_name}), h("td", {text: o.dataset}), h("td", {class: "num", text: fmtInt(o.events)}),
        h("td", {class: "num", text: fmtBytes(o.size), title: fmtInt(o.size) + " bytes"}),
        h("td", {class: "mono", text: o.adler32}), h("td", {class: "mono wrap", text: o.location}),
        h("td", {}, o.certification ? h("span", {class: "badge cert-" + o.certification, text: o.certification})
          : h("span", {class: "muted", text: "not compared"})),
        h("td", {class: "mono wrap"}, o.validation ? (/^https?:/.test(o.validation)
          ? h("a", {href: o.validation, text: o.validation, rel: "noreferrer"}) : o.validation) : "—"),
        h("td", {text: fmtTime(o.registered_at)}))), "No merged file registered yet."));

    const validation = d.outputs.filter((o) => o.validation).map((o) => validationCard(o));
    return h("div", {id: "task-page"}, head, charts, failures, workers, outputs, validation);
  }

  // -- validation histograms of the merged files (read once per registration, then kept) -----------------
  const validationSets = new Map();  // "<file>@<registered_at>" -> the validation JSON, "loading" or "missing"
  let lastTask = null;
  function validationSet(o) {
    const key = o.file_name + "@" + o.registered_at;
    if (!validationSets.has(key)) {
      validationSets.set(key, "loading");
      getJSON("tasks/" + encodeURIComponent(taskName) + "/outputs/" + encodeURIComponent(o.file_name) +
        "/validation").then((v) => {
        validationSets.set(key, v || "missing");
        if (lastTask) document.getElementById("view").replaceChildren(renderTask(lastTask));
      }).catch(() => validationSets.delete(key));  // asked again at the next refresh
    }
    return validationSets.get(key);
  }
  function validationCard(o) {
    const v = validationSet(o);
    const title = "Validation of " + o.file_name;
    if (v === "loading") return card(title, h("p", {class: "empty", text: "Reading its histograms…"}));
    if (v === "missing") return card(title, h("p", {class: "empty", text: "No validation set stored."}));
    const verdicts = new Map((v.comparisons || []).map((c) => [c.name, c]));
    const figures = v.histograms.map((hst) => {
      const cmp = verdicts.get(hst.name);
      const bars = hst.counts.map((count, i) => ({value: count,
        tip: fmtNum(hst.edges[i], 3) + " – " + fmtNum(hst.edges[i + 1], 3) + ": " + fmtInt(count) + " events"}));
      const labels = [[0, fmtNum(hst.edges[0], 3), "start"], [1, fmtNum(hst.edges[hst.edges.length - 1], 3), "end"]];
      const caption = hst.name + " per event" + (cmp ? " · p = " + fmtNum(cmp.p_value, 4) +
        (cmp.passed ? "" : " (below " + fmtNum(v.min_p_value, 4) + ")") : "");
      return h("figure", {class: "validation" + (cmp && !cmp.passed ? " failed" : ""), "data-histogram": hst.name},
        h("figcaption", {text: caption}), barChart("validation", bars, labels, "events", hst.name));
    });
    const verdict = v.certification
      ? h("p", {}, h("span", {class: "badge cert-" + v.certification, text: v.certification}),
        " against ", h("span", {class: "mono wrap", text: v.reference}), " (chi-square p ≥ " +
        fmtNum(v.min_p_value, 4) + " for every histogram)")
      : h("p", {class: "muted", text: "Not compared: the task names no reference set."});
    return h("section", {class: "card", "data-validation": o.file_name}, h("h3", {text: title}), verdict,
      h("div", {class: "validation-grid"}, figures));
  }

  // -- the loop ------------------------------------------------------------------------------------------
  async function refresh() {
    const view = document.getElementById("view");
    try {
      let content;
      if (taskName) {
        document.getElementById("crumb").textContent = "› " + taskName;
        const d = await getJSON("tasks/" + encodeURIComponent(taskName));
        lastTask = d;
        content = d ? renderTask(d) : h("p", {class: "empty", id: "no-task",
          text: "No event-service task " + taskName + " in the ledger."});
      } else if (dagParam) {
        content = h("p", {class: "empty", id: "no-task", text: dagParam + " is not an event-service DAG."});
      } else {
        content = renderList(await getJSON("tasks"));
      }
      document.getElementById("login").hidden = true;
      view.replaceChildren(content);
      banner("");
      updates += 1;
      document.body.dataset.updates = String(updates);
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString("en-GB") +
        ", every " + refreshS + " s";
    } catch (e) {
      if (e instanceof AuthNeeded) {
        sessionStorage.removeItem(TOKEN_KEY);
        document.getElementById("login").hidden = false;
        view.replaceChildren();
        return false;
      }
      banner("Cannot read the monitoring data now (" + e.message + "); retrying.");
    }
    return true;
  }
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => { if (await refresh()) schedule(); }, refreshS * 1000);
  }
  document.getElementById("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    if (await refresh()) schedule();
  });
  if (taskName) document.getElementById("home").setAttribute("href", pageLink(null));
  refresh().then((ok) => { if (ok) schedule(); });
})();
