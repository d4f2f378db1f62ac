/* Compute Broker dashboards: what every page shares (token, navigation, API calls, charts).
 *
 * Token: pasted into the login form, or taken once from the URL fragment (#token=..., never
 * sent to the server); kept in this tab's sessionStorage only, so closing the tab logs out.
 * Every page calls CB.start(load): load() fetches its JSON API with the token and renders; a
 * 401 shows the login form; once the first load has finished (rendered or failed),
 * <body data-ready="1"> says so (the browser tests wait for it). Charts are uPlot (vendored in
 * /static, MIT); nothing is fetched from outside the broker.
 */
"use strict";
const CB = (() => {
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("token")) {
    sessionStorage.setItem("cb-token", frag.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem("cb-token") || "";
  const $ = id => document.getElementById(id);
  const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const num = (v, d = 1) => (v === null || v === undefined) ? "–" : (Math.round(v * 10 ** d) / 10 ** d).toString();
  const pct = v => (v === null || v === undefined) ? "–" : Math.round(v * 100) + " %";
  function dur(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (Math.round(s / 360) / 10) + " h";
    return (Math.round(s / 8640) / 10) + " d";
  }
  const time = t => t ? new Date(t * 1000).toLocaleString() : "–";
  const PAGES = [["overview", "/dashboard", "Overview"], ["nodes", "/dashboard/nodes", "Nodes"],
                 ["queue", "/dashboard/queue", "Queue"], ["projects", "/dashboard/projects", "Projects"],
                 ["capacity", "/dashboard/capacity", "Capacity"]];

  /** Header with navigation, the error line and the login form, at the top of <body>. */
  function chrome(title, active) {
    const nav = PAGES.map(([k, href, label]) => `<a href="${href}" class="${k === active ? "active" : ""}">${label}</a>`).join("");
    document.body.insertAdjacentHTML("afterbegin",
      `<header><h1>Compute Broker · ${esc(title)}</h1><nav>${nav}</nav><span class="meta" id="meta">loading…</span>` +
      `<a href="#" id="logout" hidden>log out</a></header><div id="error" role="alert"></div>` +
      `<form id="login" hidden aria-label="log in"><label for="token-input">Token</label>` +
      `<input id="token-input" type="password" autocomplete="off" spellcheck="false" placeholder="paste your broker token">` +
      `<button type="submit">Log in</button><span class="meta">kept in this browser tab only (session storage)</span></form>`);
  }

  function showLogin(show) {
    $("login").hidden = !show;
    $("logout").hidden = show || !token();
    if (show) $("token-input").focus();
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path) {
    const r = await fetch(path, {headers: {"Authorization": "Bearer " + token()}});
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) showLogin(true);
    if (!r.ok) throw new ApiError(r.status, (body.error && body.error.message) || r.statusText);
    return body;
  }

  /** POST a JSON body; the answer's JSON, or an ApiError with the broker's message. */
  async function post(path, payload) {
    const r = await fetch(path, {method: "POST", body: JSON.stringify(payload),
                                 headers: {"Authorization": "Bearer " + token(), "Content-Type": "application/json"}});
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) showLogin(true);
    if (!r.ok) throw new ApiError(r.status, (body.error && body.error.message) || r.statusText);
    return body;
  }

  async function text(path) {
    const r = await fetch(path, {headers: {"Authorization": "Bearer " + token()}});
    const body = await r.text();
    if (!r.ok) {
      let msg = r.statusText;
      try { msg = JSON.parse(body).error.message; } catch (e) { /* not JSON */ }
      throw new ApiError(r.status, msg);
    }
    return body;
  }

  /** Run load() now and every `every` ms; show failures in #error; mark <body data-ready>. */
  function start(load, {what = "this page", every = 15000} = {}) {
    const run = async () => {
      try {
        await load();
        $("error").textContent = "";
        showLogin(false);
      } catch (e) {
        $("error").textContent = `Could not load ${what}: ${e.message}` +
          (token() ? "" : " (log in below with your token, or open this page as ...#token=<your token>)");
      } finally {
        document.body.dataset.ready = "1";
      }
    };
    $("login").addEventListener("submit", ev => {
      ev.preventDefault();
      const v = $("token-input").value.trim();
      if (!v) return;
      sessionStorage.setItem("cb-token", v);
      $("token-input").value = "";
      run();
    });
    $("logout").addEventListener("click", ev => { ev.preventDefault(); sessionStorage.removeItem("cb-token"); run(); });
    run();
    if (every) setInterval(run, every);
    return run;
  }

  /** A uPlot chart in `el` (replacing what was there): x = epoch seconds, series as given. */
  function chart(el, {series, data, height = 180, yLabel = "", stepped = false}) {
    el.innerHTML = "";
    const width = Math.max(280, el.clientWidth || 600);
    const opts = {
      width, height, legend: {show: true},
      scales: {x: {time: true}, y: {range: (u, lo, hi) => [0, Math.max(1, hi * 1.05)]}},
      axes: [{}, {label: yLabel, size: 56}],
      series: [{}, ...series.map(s => ({label: s.label, stroke: s.color, width: s.width || 1.5,
                                        fill: s.fill || undefined, dash: s.dash || undefined,
                                        paths: stepped ? uPlot.paths.stepped({align: 1}) : undefined,
                                        spanGaps: false, points: {show: false}}))],
    };
    return new uPlot(opts, data, el);
  }

  /** A color from green (0) over amber to red (1); null: grey. */
  function heat(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "#e8ecf0";
    x = Math.max(0, Math.min(1, x));
    const h = 210 - 210 * x;  // blue (idle) -> red (hot)
    return `hsl(${h}, 70%, ${60 - 15 * x}%)`;
  }

  function table(el, head, rows) {
    el.innerHTML = "<thead><tr>" + head.map(h => `<th>${esc(h)}</th>`).join("") + "</tr></thead><tbody>" +
      (rows.length ? rows.join("") : `<tr><td colspan="${head.length}" class="muted">none</td></tr>`) + "</tbody>";
  }

  return {token, $, esc, num, pct, dur, time, chrome, api, post, text, start, chart, heat, table, showLogin};
})();
