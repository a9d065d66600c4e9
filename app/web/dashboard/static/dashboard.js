// transferbench dashboard: progressive enhancement of server-rendered pages. Every page
// reads fine without this file; with it, charts are drawn (plotly.js, served by the API
// from the plotly package), job progress updates live, and uploads show their progress.
"use strict";

(function () {
  document.documentElement.classList.add("js");

  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const ACCENT = "#1d4ed8";
  const MUTED = "#94a3b8";
  const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif", size: 13, color: "#111827" };

  // An error from the API: its problem+json fields as a readable message.
  class ProblemError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.title = problem.title || `Error ${status}`;
      this.detail = problem.detail || "";
    }
  }

  function parseProblem(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && (body.title || body.detail)) return new ProblemError(status, body);
    } catch (_) { /* not JSON */ }
    const fallback = status === 0 ? "The server could not be reached; check your connection." : `The server answered ${status}.`;
    return new ProblemError(status, { title: status === 0 ? "No connection" : "Error", detail: fallback });
  }

  // fetch() for the API: the session cookie authorises it, state changes carry the CSRF token.
  async function api(url, options = {}) {
    const method = (options.method || "GET").toUpperCase();
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (UNSAFE.has(method)) headers["X-CSRF-Token"] = csrf();
    const response = await fetch(url, { credentials: "same-origin", ...options, method, headers });
    const text = await response.text();
    if (!response.ok) throw parseProblem(response.status, text);
    return text ? JSON.parse(text) : null;
  }

  const readJSON = (id) => {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  };
  const hasPlotly = () => typeof window.Plotly !== "undefined";
  const fmt = (v) => (v === null || v === undefined || !isFinite(v) ? "–" : Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 10 ? v.toFixed(2) : Math.abs(v) >= 0.001 || v === 0 ? v.toFixed(3) : v.toExponential(2));
  const escapeHTML = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  function plot(node, data, layout) {
    if (!hasPlotly() || !node) return;
    node.hidden = false;
    const base = {
      font: FONT,
      margin: { l: 10, r: 20, t: 30, b: 45 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      hoverlabel: { font: FONT },
    };
    window.Plotly.react(node, data, { ...base, ...layout }, { displayModeBar: false, responsive: true });
  }

  // ---- live job progress -----------------------------------------------------------------
  // The jobs table's rows are rendered by the server (/dashboard/partials/jobs). Each running
  // ranking's event stream (GET /v1/rankings/{id}/events) says when to fetch them again; a
  // slow poll picks up rankings started elsewhere, and a fast one stands in where the
  // streams are unavailable.
  const ACTIVE = 'tr[data-status="queued"], tr[data-status="running"]';
  const MAX_STREAMS = 3; // a browser keeps ~6 connections per host: leave most for the page

  function liveJobs(onFinished) {
    document.querySelectorAll("tbody[data-live-jobs]").forEach((tbody) => {
      const src = tbody.dataset.liveJobs;
      if (!src) return;
      const streams = new Map(); // job id -> its EventSource, open or ended
      const open = new Set();
      let streaming = typeof window.EventSource !== "undefined";
      let last = tbody.innerHTML.trim();
      let failures = 0;
      let pending = null;
      const statuses = () => Object.fromEntries([...tbody.querySelectorAll("tr[data-job]")].map((tr) => [tr.dataset.job, tr.dataset.status]));

      async function refresh() {
        try {
          const response = await fetch(src, { credentials: "same-origin", headers: { Accept: "text/html" } });
          if (response.redirected || response.status === 401) return false; // session over
          if (!response.ok) { failures += 1; return true; }
          failures = 0;
          const html = (await response.text()).trim();
          if (html !== last) {
            const before = statuses();
            tbody.innerHTML = html;
            last = html;
            const after = statuses();
            const finished = Object.keys(after).filter((id) => before[id] && before[id] !== after[id] && (after[id] === "done" || after[id] === "failed"));
            if (finished.length && onFinished) onFinished(finished);
            const count = document.querySelector("[data-running-count]");
            if (count) count.textContent = tbody.querySelectorAll(ACTIVE).length;
          }
          follow();
        } catch (_) {
          failures += 1;
        }
        return true;
      }

      // Coalesce bursts of events into one fetch.
      function soon() {
        if (pending) return;
        pending = setTimeout(() => { pending = null; refresh(); }, 150);
      }

      function follow() {
        if (!streaming) return;
        tbody.querySelectorAll(ACTIVE).forEach((tr) => {
          const id = tr.dataset.job;
          if (streams.has(id) || open.size >= MAX_STREAMS) return;
          const stream = new EventSource(`/v1/rankings/${encodeURIComponent(id)}/events`);
          streams.set(id, stream);
          open.add(id);
          let ended = false;
          const end = () => { ended = true; stream.close(); open.delete(id); soon(); };
          stream.addEventListener("progress", soon);
          stream.addEventListener("done", end);
          stream.addEventListener("failed", end);
          stream.addEventListener("error", () => {
            if (ended) return;
            stream.close();
            open.delete(id);
            streaming = false; // no event streams here: poll instead
            soon();
          });
        });
      }

      async function tick() {
        const alive = await refresh();
        if (!alive) return;
        setTimeout(tick, Math.min(delay() * (1 + failures), 30000));
      }

      // Fast while a running ranking has no stream to tell of its progress, else slow.
      const delay = () => ([...tbody.querySelectorAll(ACTIVE)].some((tr) => !open.has(tr.dataset.job)) ? 1000 : 5000);

      follow();
      setTimeout(tick, delay());
    });
  }

  // ---- dataset page ----------------------------------------------------------------------
  function leaderboardChart(board) {
    const node = document.getElementById("leaderboard-chart");
    if (!node || !board || !board.entries.length) return;
    const entries = board.entries;
    const better = board.higher_is_better ? "↑ better" : "↓ better";
    plot(node, [{
      type: "bar",
      orientation: "h",
      y: entries.map((e) => `${e.rank}. ${e.model}`),
      x: entries.map((e) => e.value),
      text: entries.map((e) => fmt(e.value)),
      textposition: "auto",
      marker: { color: entries.map((e) => (e.rank === 1 ? ACCENT : "#93a8d8")) },
      hovertemplate: "%{y}<br>" + board.metric + " = %{x}<extra></extra>",
      cliponaxis: false,
    }], {
      height: Math.max(160, 70 + 34 * entries.length),
      yaxis: { autorange: "reversed", automargin: true, ticksuffix: "  " },
      xaxis: { title: { text: `${board.metric} (${better})` }, zeroline: true, zerolinecolor: "#cbd5e1", gridcolor: "#eef0f3", automargin: true },
    });
  }

  function leaderboardTable(board, prefix) {
    const table = document.querySelector("[data-leaderboard-table]");
    if (!table) return;
    table.querySelector("caption").textContent = `Leaderboard by ${board.metric}`;
    table.querySelectorAll("thead th")[2].textContent = board.metric;
    table.querySelector("tbody").innerHTML = board.entries.map((e) =>
      `<tr><td class="num">${e.rank}</td><td><a href="${prefix}/models/${encodeURIComponent(e.model_id)}">${escapeHTML(e.model)}</a></td>` +
      `<td class="num">${fmt(e.value)}</td><td class="num">${e.metric_version}</td><td class="nowrap">${escapeHTML(new Date(e.scored_at).toISOString().slice(0, 16).replace("T", " "))}</td></tr>`).join("");
  }

  function initLeaderboard() {
    const form = document.querySelector("[data-leaderboard-form]");
    leaderboardChart(readJSON("leaderboard-data"));
    if (!form) return;
    const select = form.querySelector("select");
    const note = () => document.querySelector("[data-recommendation-note]");
    select.addEventListener("change", async () => {
      const metric = select.value;
      try {
        select.disabled = true;
        const board = await api(`/v1/datasets/${encodeURIComponent(form.dataset.dataset)}/leaderboard?metric=${encodeURIComponent(metric)}`);
        leaderboardTable(board, "/dashboard");
        leaderboardChart(board);
        if (note()) note().hidden = metric !== "recommended";
        const url = new URL(window.location.href);
        url.searchParams.set("metric", metric);
        history.replaceState(null, "", url);
      } catch (err) {
        form.submit(); // the server renders the same table
      } finally {
        select.disabled = false;
      }
    });
  }

  function scatterTitle(metric, tau, taus) {
    if (tau !== undefined && tau !== null) return `${metric}: weighted τ = ${fmt(tau)}`;
    if (!Object.keys(taus).length) return `${metric}: weighted τ needs 3 outcomes`;
    if (metric === "recommended") return "recommended: no τ until another dataset has outcomes";
    return `${metric}: no weighted τ`;
  }

  function initScatter() {
    const data = readJSON("scatter-data");
    const form = document.querySelector("[data-scatter-form]");
    const node = document.getElementById("scatter-chart");
    if (!data || !form || !node) return;
    const select = form.querySelector("select");
    const draw = () => {
      const metric = select.value;
      const points = data.series[metric] || [];
      const tau = data.taus[metric];
      plot(node, [{
        type: "scatter",
        mode: "markers+text",
        x: points.map((p) => p.score),
        y: points.map((p) => p.outcome),
        text: points.map((p) => p.model),
        textposition: "top center",
        marker: { size: 11, color: metric === "recommended" ? ACCENT : "#0f766e", line: { width: 1, color: "#fff" } },
        hovertemplate: "%{text}<br>" + metric + " = %{x}<br>" + data.measure + " = %{y}<extra></extra>",
        cliponaxis: false,
      }], {
        height: 320,
        margin: { l: 60, r: 30, t: 40, b: 50 },
        title: { text: scatterTitle(metric, tau, data.taus), font: { ...FONT, size: 14 }, x: 0, xanchor: "left" },
        xaxis: { title: { text: metric }, gridcolor: "#eef0f3", zeroline: false, automargin: true },
        yaxis: { title: { text: data.measure }, gridcolor: "#eef0f3", zeroline: false, automargin: true },
      });
    };
    const withTau = [...select.options].find((o) => data.taus[o.value] !== undefined && data.taus[o.value] !== null);
    if (withTau && (data.taus[select.value] === undefined || data.taus[select.value] === null)) select.value = withTau.value;
    select.addEventListener("change", draw);
    draw();
  }

  // After a ranking finishes, fetch the page again and swap in the sections it changed.
  async function refreshSections(ids) {
    try {
      const response = await fetch(window.location.pathname + window.location.search, { credentials: "same-origin" });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const id of ids) {
        const fresh = doc.getElementById(id);
        const stale = document.getElementById(id);
        if (fresh && stale) stale.replaceWith(document.adoptNode(fresh));
      }
      document.querySelectorAll(".stats").forEach((stale, i) => {
        const fresh = doc.querySelectorAll(".stats")[i];
        if (fresh) stale.replaceWith(document.adoptNode(fresh));
      });
      initLeaderboard();
      initScatter();
    } catch (_) { /* the tables keep what they had */ }
  }

  // ---- metrics page ----------------------------------------------------------------------
  function initMetrics() {
    const data = readJSON("metrics-data");
    const form = document.querySelector("[data-figure-form]");
    const node = document.getElementById("metrics-chart");
    if (!data || !form || !node) return;
    const select = form.querySelector("select");
    const draw = () => {
      const figure = select.value;
      const values = data.figures[figure];
      plot(node, [{
        type: "bar",
        x: data.methods,
        y: values.map((v) => (v === null ? 0 : v)),
        text: values.map(fmt),
        textposition: "outside",
        cliponaxis: false,
        marker: { color: data.methods.map((m, i) => (values[i] === null ? MUTED : m === "recommended" ? ACCENT : "#64748b")) },
        hovertemplate: "%{x}: %{text}<extra></extra>",
      }], {
        height: 340,
        margin: { l: 50, r: 20, t: 30, b: 90 },
        yaxis: { title: { text: `mean ${data.labels[figure]}` }, gridcolor: "#eef0f3", zeroline: true, zerolinecolor: "#cbd5e1", automargin: true },
        xaxis: { tickangle: -30, automargin: true },
      });
    };
    select.addEventListener("change", draw);
    draw();
  }

  // ---- upload page -----------------------------------------------------------------------
  function initUpload() {
    const form = document.querySelector("[data-upload-form]");
    if (!form) return;
    const box = form.querySelector("[data-upload-error]");
    const title = form.querySelector("[data-upload-error-title]");
    const detail = form.querySelector("[data-upload-error-detail]");
    const wrap = form.querySelector("[data-upload-progress]");
    const bar = wrap.querySelector("progress");
    const status = form.querySelector("[data-upload-status]");
    const submit = form.querySelector("[data-upload-submit]");
    const showError = (problem) => {
      title.textContent = problem.title + ".";
      detail.textContent = problem.detail;
      box.hidden = false;
      box.focus?.();
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      box.hidden = true;
      const file = form.elements.file.files[0];
      if (!file) { showError({ title: "No file", detail: "Choose a file to upload." }); return; }
      const data = new FormData();
      data.append("file", file);
      data.append("name", form.elements.name.value.trim() || file.name.replace(/\.[^.]+$/, ""));
      if (form.elements.modality.value) data.append("modality", form.elements.modality.value);
      if (form.elements.task.value) data.append("task", form.elements.task.value);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/datasets");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      wrap.hidden = false;
      bar.value = 0;
      submit.disabled = true;
      status.textContent = `Uploading ${file.name}…`;
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        const pct = Math.round((100 * e.loaded) / e.total);
        bar.value = pct;
        status.textContent = `Uploading ${file.name}: ${pct}% (${(e.loaded / 1048576).toFixed(1)} of ${(e.total / 1048576).toFixed(1)} MiB)`;
      });
      xhr.upload.addEventListener("load", () => {
        bar.value = 100;
        status.textContent = "Uploaded; the server is checking the dataset…";
      });
      xhr.addEventListener("load", () => {
        submit.disabled = false;
        if (xhr.status === 200 || xhr.status === 201) {
          const body = JSON.parse(xhr.responseText);
          status.textContent = xhr.status === 201 ? `Stored ${body.name}: ${body.n_samples} samples. Opening it…` : `Already stored (same content) as ${body.name}. Opening it…`;
          window.location.assign(`/dashboard/datasets/${encodeURIComponent(body.id)}`);
          return;
        }
        wrap.hidden = true;
        showError(parseProblem(xhr.status, xhr.responseText));
      });
      xhr.addEventListener("error", () => {
        submit.disabled = false;
        wrap.hidden = true;
        showError(parseProblem(0, ""));
      });
      xhr.send(data);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (!hasPlotly()) document.documentElement.classList.add("no-charts");
    if (page === "dataset") {
      initLeaderboard();
      initScatter();
      liveJobs(() => refreshSections(["leaderboard", "agreement", "evaluation"]));
    } else if (page === "overview") {
      liveJobs(null);
    } else if (page === "metrics") {
      initMetrics();
    } else if (page === "upload") {
      initUpload();
    }
  });

  window.transferbench = { api, ProblemError };
})();
