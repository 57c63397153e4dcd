// Vigil console: charts (uPlot), the alarm queue, training progress. Writes go to the /v1 API
// with the session cookie (HttpOnly: this script never sees it) and the CSRF header.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const body = document.body;
  const page = body.dataset.page;

  // -- shared ------------------------------------------------------------------------------
  document.addEventListener("htmx:configRequest", (e) => { e.detail.headers["X-CSRF-Token"] = csrf; });

  async function api(method, url, payload) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    if (payload !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(url, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = new Error((data && (data.detail || data.title)) || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function toast(message, bad) {
    const box = document.getElementById("toast");
    if (!box) return;
    const item = document.createElement("div");
    item.className = "msg" + (bad ? " bad" : "");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(() => item.remove(), 6000);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // A list endpoint's items: a bare array, or a page {"<name>": [...], "next_cursor"}.
  const items = (answer, name) => (Array.isArray(answer) ? answer : (answer && answer[name]) || []);
  const toSeconds = (iso) => Date.parse(iso) / 1000;
  const stamp = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  const toggle = document.getElementById("theme-toggle");
  if (toggle) {
    toggle.addEventListener("click", () => {
      const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      try { localStorage.setItem("vigil-theme", next); } catch (e) { /* private mode */ }
      document.dispatchEvent(new Event("vigil:theme"));
    });
  }

  // -- charts --------------------------------------------------------------------------------
  // Bands (alarms, labels) drawn under the lines of every chart; colours: Okabe-Ito.
  function bandsPlugin(getBands) {
    return {
      hooks: {
        drawClear: (u) => {
          const ctx = u.ctx;
          const top = u.bbox.top, height = u.bbox.height;
          for (const band of getBands()) {
            const x0 = u.valToPos(band.start, "x", true);
            const x1 = u.valToPos(band.end, "x", true);
            if (x1 < u.bbox.left || x0 > u.bbox.left + u.bbox.width) continue;
            ctx.fillStyle = band.color;
            ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
          }
        },
      },
    };
  }

  function thresholdPlugin(getThreshold) {
    return {
      hooks: {
        draw: (u) => {
          const threshold = getThreshold();
          if (threshold === null || threshold === undefined) return;
          const y = u.valToPos(threshold, "y", true);
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = css("--oi-vermillion");
          ctx.setLineDash([6, 4]);
          ctx.lineWidth = 2;
          ctx.beginPath();
          ctx.moveTo(u.bbox.left, y);
          ctx.lineTo(u.bbox.left + u.bbox.width, y);
          ctx.stroke();
          ctx.restore();
        },
      },
    };
  }

  function axes() {
    const stroke = css("--muted"), grid = css("--line");
    return [
      { stroke, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
      { stroke, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 60 },
    ];
  }

  // Alarm statuses drawn like fleet statuses: open (vermillion), awaiting a verdict (orange),
  // acknowledged (sky), judged (green).
  const ALARM_STATUS_CLASS = { open: "open_alarms", closed: "stale", acknowledged: "training", dismissed: "healthy", confirmed: "healthy" };

  const LINE_COLOURS = ["--oi-sky", "--oi-orange", "--oi-green", "--oi-purple", "--oi-yellow", "--oi-blue"];

  // -- fleet ---------------------------------------------------------------------------------
  if (page === "fleet") {
    document.querySelectorAll("button.sort").forEach((button) => {
      button.addEventListener("click", () => {
        document.getElementById("sort").value = button.dataset.sort;
        document.querySelectorAll("button.sort").forEach((b) => b.classList.toggle("active", b === button));
        htmx.trigger("#fleet-filter", "submit");
      });
    });
  }

  // -- one series ----------------------------------------------------------------------------
  if (page === "series") {
    const series = JSON.parse(body.dataset.series);
    const extent = JSON.parse(body.dataset.extent || "null");
    const canLabel = body.dataset.canLabel === "true";
    const holder = document.getElementById("charts");
    const state = { start: null, end: null, charts: [], alarms: [], labels: [], threshold: null, selected: null, pick: null };
    let loading = 0;

    const bands = () => {
      const out = [];
      for (const label of state.labels) {
        const colour = label.label === "false_negative" ? "rgba(240,228,66,.28)"
          : label.kind === "normal" ? "rgba(86,180,233,.22)" : "rgba(204,121,167,.28)";
        out.push({ start: label.start, end: label.end, color: colour });
      }
      for (const alarm of state.alarms) {
        out.push({ start: alarm._start, end: alarm._end, color: alarm.id === state.selected ? "rgba(213,94,0,.45)" : "rgba(213,94,0,.22)" });
      }
      return out;
    };

    function rangeText() {
      document.getElementById("range-text").textContent = stamp(state.start) + " – " + stamp(state.end);
    }

    async function load(start, end) {
      const ticket = ++loading;
      const width = Math.max(200, Math.min(4000, Math.round(holder.clientWidth || 1200)));
      const query = new URLSearchParams({ width: String(width) });
      if (start !== null) query.set("start", start.toFixed(6));
      if (end !== null) query.set("end", end.toFixed(6));
      holder.setAttribute("aria-busy", "true");
      let chart;
      try {
        chart = await api("GET", `/console/api/series/${series.id}/chart?${query}`);
      } catch (error) {
        toast("Could not load the chart: " + error.message, true);
        return;
      }
      if (ticket !== loading) return; // a newer request superseded this one
      state.start = chart.start; state.end = chart.end;
      state.labels = chart.labels || [];
      state.threshold = chart.threshold;
      draw(chart);
      rangeText();
      holder.setAttribute("aria-busy", "false");
      holder.dataset.points = String(chart.points || 0);
      loadAlarms();
    }

    // A selection on any chart (they are synced, so each reports it): fetch that range at
    // full resolution; the server decimates it to the charts' width again.
    function zoomTo(lo, hi) {
      clearTimeout(zoomTo.timer);
      zoomTo.timer = setTimeout(() => load(lo, hi), 100);
    }

    function draw(chart) {
      for (const c of state.charts) c.destroy();
      state.charts = [];
      holder.replaceChildren();
      if (!chart.channels || !chart.channels.length) {
        holder.append(el("p", { class: "muted", text: "No data stored for this series yet." }));
        return;
      }
      const width = holder.clientWidth - 12;
      const labelMode = () => canLabel && document.getElementById("label-mode").checked;
      const common = (title, height, extra) => ({
        title, width, height,
        scales: { x: { time: true, min: chart.start, max: chart.end } },
        axes: axes(),
        legend: { show: true },
        cursor: { sync: { key: "vigil-series" }, drag: { x: true, y: false, setScale: false } },
        plugins: [bandsPlugin(bands), ...(extra || [])],
        hooks: {
          setSelect: [(u) => {
            if (u.select.width < 3) return;
            const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
            if (labelMode()) {
              state.pick = [lo, hi];
              document.getElementById("label-range").textContent = stamp(lo) + " – " + stamp(hi);
              document.getElementById("label-submit").disabled = false;
            } else {
              u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
              zoomTo(lo, hi);
            }
          }],
        },
      });
      chart.channels.forEach((channel, index) => {
        const div = el("div", { class: "chart", "data-channel": channel.name });
        holder.append(div);
        const opts = common(channel.name, 150);
        opts.series = [{}, { label: channel.name, stroke: css(LINE_COLOURS[index % LINE_COLOURS.length]), width: 1.25, points: { show: false } }];
        state.charts.push(new uPlot(opts, [channel.t, channel.v], div));
      });
      const scoreDiv = el("div", { class: "chart", "data-channel": "score" });
      holder.append(scoreDiv);
      const opts = common("Adjusted score (dashed: threshold)", 170, [thresholdPlugin(() => state.threshold)]);
      opts.series = [{}, { label: "score", stroke: css("--text"), width: 1.5, points: { show: false } }];
      const ys = chart.scores.v.filter((v) => v !== null);
      const top = Math.max(state.threshold || 0, ...(ys.length ? ys : [1])) * 1.1;
      // A fault can score a hundred times the threshold: then an asinh scale (linear near 0,
      // logarithmic far above) keeps both the threshold line and the peaks readable.
      const threshold = state.threshold || 0;
      opts.scales.y = threshold > 0 && top > 20 * threshold
        ? { distr: 4, asinh: threshold, range: [0, top] }
        : { range: [0, top || 1] };
      state.charts.push(new uPlot(opts, [chart.scores.t, chart.scores.v], scoreDiv));
    }

    async function loadAlarms() {
      const list = document.getElementById("series-alarms");
      const query = new URLSearchParams({ series_id: String(series.id), limit: "200" });
      query.set("since", new Date(state.start * 1000).toISOString());
      query.set("until", new Date(state.end * 1000).toISOString());
      try {
        const page = await api("GET", `/v1/alarms?${query}`);
        state.alarms = (page.alarms || []).map((a) => ({ ...a, _start: toSeconds(a.start), _end: toSeconds(a.end) }));
      } catch (error) {
        state.alarms = [];
        list.textContent = error.status === 404 ? "Alarms are not available on this server." : "Could not load alarms: " + error.message;
        return;
      }
      for (const c of state.charts) c.redraw(false);
      list.replaceChildren();
      list.classList.toggle("muted", !state.alarms.length);
      if (!state.alarms.length) { list.textContent = "No alarms in this range."; return; }
      for (const alarm of state.alarms) {
        list.append(el("div", { class: "alarm-item", "data-alarm": alarm.id },
          el("span", { class: "status status-" + ALARM_STATUS_CLASS[alarm.status], text: alarm.status }),
          el("button", { type: "button", text: stamp(alarm._start) + " · peak " + Number(alarm.peak_score).toFixed(2), onclick: () => selectAlarm(alarm) }),
          el("span", { class: "muted", text: (alarm.kind === "data_quality" ? `data quality: ${alarm.check} on ` : "model: ") + (alarm.channels || []).slice(0, 3).map((c) => c.name).join(", ") + (alarm.verdict ? " · verdict " + (alarm.verdict.label || alarm.verdict) : "") }),
        ));
      }
    }

    async function selectAlarm(alarm) {
      state.selected = alarm.id;
      for (const c of state.charts) c.redraw(false);
      let detail;
      try { detail = await api("GET", `/v1/alarms/${alarm.id}`); } catch (error) { toast(error.message, true); return; }
      drawContributions(detail);
    }

    function contributionsOf(window) {
      const raw = window.channels || window.contributions || window.channel_contributions || {};
      if (Array.isArray(raw)) {
        const out = {};
        raw.forEach((item, i) => {
          if (typeof item === "number") out[series.channels[i]] = item;
          else out[item.name] = item.share !== undefined ? item.share : item.value;
        });
        return out;
      }
      return raw;
    }

    function drawContributions(detail) {
      const canvas = document.getElementById("contrib");
      const windows = detail.windows_detail || detail.scores || detail.windows || [];
      const note = document.getElementById("contrib-note");
      if (!Array.isArray(windows) || !windows.length) { note.textContent = "This alarm has no per-window contributions."; return; }
      const channels = series.channels;
      const ratio = window.devicePixelRatio || 1;
      canvas.width = canvas.clientWidth * ratio; canvas.height = canvas.clientHeight * ratio;
      const ctx = canvas.getContext("2d");
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      const labelWidth = 110 * ratio;
      const cellW = (canvas.width - labelWidth) / windows.length, cellH = canvas.height / channels.length;
      const matrix = windows.map(contributionsOf);
      let max = 0;
      for (const row of matrix) for (const c of channels) max = Math.max(max, Number(row[c] || 0));
      ctx.font = `${12 * ratio}px system-ui`;
      channels.forEach((name, j) => {
        ctx.fillStyle = css("--text");
        ctx.fillText(name, 4, (j + 0.65) * cellH);
        matrix.forEach((row, i) => {
          const share = max > 0 ? Number(row[name] || 0) / max : 0;
          // Sequential ramp from the panel colour to vermillion: order by lightness, not hue.
          ctx.fillStyle = `rgba(213,94,0,${0.08 + 0.92 * share})`;
          ctx.fillRect(labelWidth + i * cellW, j * cellH + 1, Math.ceil(cellW), cellH - 2);
        });
      });
      note.textContent = `${windows.length} windows × ${channels.length} channels; darker: larger share of the score.`;
      canvas.dataset.drawn = "true";
    }

    document.querySelectorAll("[data-range]").forEach((button) => {
      button.addEventListener("click", () => {
        if (!extent) return;
        const hi = extent[1] / 1e6;
        if (button.dataset.range === "all") load(null, null);
        else load(Math.max(extent[0] / 1e6, hi - Number(button.dataset.range)), hi);
      });
    });
    document.getElementById("zoom-out").addEventListener("click", () => {
      const span = state.end - state.start;
      const lo = extent ? extent[0] / 1e6 : -Infinity, hi = extent ? extent[1] / 1e6 : Infinity;
      load(Math.max(lo, state.start - span / 2), Math.min(hi, state.end + span / 2));
    });

    const pan = (direction) => {
      const span = state.end - state.start;
      const lo = extent ? extent[0] / 1e6 : -Infinity, hi = extent ? extent[1] / 1e6 : Infinity;
      let start = state.start + direction * span / 2;
      start = Math.max(lo, Math.min(start, hi - span));
      load(start, start + span);
    };
    document.getElementById("pan-left").addEventListener("click", () => pan(-1));
    document.getElementById("pan-right").addEventListener("click", () => pan(1));

    if (canLabel) {
      document.getElementById("label-form").addEventListener("submit", async (event) => {
        event.preventDefault();
        if (!state.pick) return;
        const label = document.getElementById("label-class").value;
        try {
          const made = await api("POST", "/v1/labels", {
            series_id: series.id, start: state.pick[0], end: state.pick[1], label,
          });
          toast(`Labelled ${made.points} points as ${label}` + (made.retrain ? `; retrain job ${made.retrain.id || made.retrain.job_id} queued` : ""));
          state.pick = null;
          document.getElementById("label-submit").disabled = true;
          document.getElementById("label-range").textContent = "no range selected";
          load(state.start, state.end);
        } catch (error) { toast("Label refused: " + error.message, true); }
      });
    }
    // Redraw when the charts' width changes (not their height: a full-page screenshot or a
    // mobile toolbar changes that alone).
    let drawnWidth = holder.clientWidth, resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        if (holder.clientWidth === drawnWidth) return;
        drawnWidth = holder.clientWidth;
        load(state.start, state.end);
      }, 300);
    });
    document.addEventListener("vigil:theme", () => load(state.start, state.end));
    load(null, null);
  }

  // -- alarm review queue --------------------------------------------------------------------
  if (page === "alarms") {
    const seriesList = JSON.parse(body.dataset.seriesList || "[]");
    const byId = Object.fromEntries(seriesList.map((s) => [s.id, s]));
    const canLabel = body.dataset.canLabel === "true";
    const queue = document.getElementById("alarm-queue");
    const pick = document.getElementById("alarm-series");
    const params = new URLSearchParams(location.search);
    if (params.get("series_id")) pick.value = params.get("series_id");
    let alarms = [], selected = 0, shown = "";

    // The series' fault classes, its own first: the generic `anomaly` is the last choice.
    const faultClasses = (s) => Object.entries(s ? s.classes : {})
      .filter(([name, kind]) => kind === "anomaly" && name !== "false_negative").map(([name]) => name)
      .sort((a, b) => (a === "anomaly") - (b === "anomaly"));

    // Alarms waiting for a verdict: open ones, and closed ones (they went quiet) nobody judged.
    async function refresh(force) {
      const ask = (status) => {
        const query = new URLSearchParams({ status, limit: "200" });
        if (pick.value) query.set("series_id", pick.value);
        return api("GET", `/v1/alarms?${query}`).then((answer) => items(answer, "alarms"));
      };
      let next;
      try { next = (await Promise.all([ask("open"), ask("closed")])).flat(); } catch (error) {
        queue.textContent = error.status === 404 ? "Alarms are not available on this server." : "Could not load alarms: " + error.message;
        return;
      }
      next.sort((a, b) => Date.parse(a.start) - Date.parse(b.start) || a.id - b.id);
      const ids = next.map((a) => a.id).join(",");
      const typing = document.activeElement && document.activeElement.tagName === "INPUT";
      if (!force && (ids === shown || typing)) return;
      shown = ids; alarms = next;
      document.getElementById("alarm-count").textContent = `${alarms.length} to review`;
      render();
    }

    function render() {
      queue.replaceChildren();
      if (!alarms.length) { queue.append(el("p", { class: "muted", text: "No open alarms. Nothing to review." })); return; }
      selected = Math.min(selected, alarms.length - 1);
      alarms.forEach((alarm, index) => queue.append(card(alarm, index)));
    }

    function card(alarm, index) {
      const s = byId[alarm.series_id];
      const classes = faultClasses(s);
      const start = toSeconds(alarm.start), end = toSeconds(alarm.end);
      const classSelect = el("select", { "aria-label": "fault class", class: "fault-class", disabled: !canLabel || !classes.length },
        ...classes.map((name) => el("option", { value: name, text: name })));
      const note = el("input", { type: "text", class: "note", placeholder: "note (optional)", "aria-label": "note", disabled: !canLabel, maxlength: "2000" });
      const act = (label) => verdict(alarm, label, note.value);
      const excerpt = el("div", { class: "excerpt" });
      const node = el("article", { class: "alarm" + (index === selected ? " selected" : ""), "data-alarm": alarm.id, tabindex: "0", onclick: () => { selected = index; mark(); } },
        el("header", {},
          el("strong", {}, el("a", { href: `/console/series/${alarm.series_id}`, text: s ? s.name : `series ${alarm.series_id}` })),
          el("span", { text: stamp(start) + " · " + Math.max(1, Math.round(end - start)) + " s" }),
          el("span", { class: "status " + (alarm.status === "open" ? "status-open_alarms" : "status-stale"), text: alarm.status }),
          el("span", { class: "score", text: `peak ${Number(alarm.peak_score).toFixed(2)} / threshold ${Number(alarm.threshold).toFixed(2)}` }),
          el("span", { class: "muted", text: [alarm.kind, alarm.check].filter(Boolean).join(" · ") + (alarm.model_version ? ` · v${alarm.model_version}` : "") }),
        ),
        el("div", { class: "channels" }, ...(alarm.channels || []).slice(0, 4).map((c) => el("span", { class: "chip", text: `${c.name} ${Math.round((c.share || 0) * 100)} %` }))),
        excerpt,
        el("div", { class: "verdicts" },
          el("button", { type: "button", class: "danger verdict-fp", disabled: !canLabel, title: "f", onclick: () => act("false_positive"), text: "False alarm" }),
          el("button", { type: "button", class: "verdict-confirm", disabled: !canLabel || !classes.length, title: "c", onclick: () => act(classSelect.value), text: "Confirm as" }),
          classSelect,
          el("button", { type: "button", class: "verdict-ack", disabled: !canLabel, title: "a", onclick: () => acknowledge(alarm), text: "Acknowledge" }),
          note,
        ),
      );
      drawExcerpt(excerpt, alarm, start, end);
      return node;
    }

    async function drawExcerpt(holder, alarm, start, end) {
      const pad = Math.max(end - start, 60);
      const query = new URLSearchParams({ start: (start - pad).toFixed(6), end: (end + pad).toFixed(6), width: "500" });
      let chart;
      try { chart = await api("GET", `/console/api/series/${alarm.series_id}/chart?${query}`); } catch (e) { return; }
      const top = (alarm.channels && alarm.channels[0] && alarm.channels[0].name) || (chart.channels[0] && chart.channels[0].name);
      const channel = chart.channels.find((c) => c.name === top);
      if (!channel) return;
      const opts = {
        width: Math.max(280, holder.clientWidth), height: 140, legend: { show: false },
        scales: { x: { time: true, min: chart.start, max: chart.end } }, axes: axes(),
        cursor: { show: false },
        series: [{}, { label: channel.name, stroke: css("--oi-sky"), width: 1.25, points: { show: false } }],
        plugins: [bandsPlugin(() => [{ start, end, color: "rgba(213,94,0,.3)" }])],
      };
      new uPlot(opts, [channel.t, channel.v], holder);
    }

    async function verdict(alarm, label, note) {
      const payload = { label };
      if (note) payload.note = note;
      try {
        const out = await api("POST", `/v1/alarms/${alarm.id}/verdict`, payload);
        const job = out && out.retrain;
        toast(`Alarm ${alarm.id}: ${label === "false_positive" ? "false alarm" : "confirmed as " + label}` + (job ? ` · retrain job ${job.id || job.job_id} queued` : ""));
        drop(alarm);
        pollJobs();
      } catch (error) { toast("Verdict refused: " + error.message, true); }
    }

    async function acknowledge(alarm) {
      try {
        await api("POST", `/v1/alarms/${alarm.id}/acknowledge`);
        toast(`Alarm ${alarm.id} acknowledged`);
        drop(alarm);
      } catch (error) { toast("Refused: " + error.message, true); }
    }

    function drop(alarm) {
      alarms = alarms.filter((a) => a.id !== alarm.id);
      shown = alarms.map((a) => a.id).join(",");
      document.getElementById("alarm-count").textContent = `${alarms.length} to review`;
      render();
    }

    function mark() {
      queue.querySelectorAll(".alarm").forEach((node, i) => node.classList.toggle("selected", i === selected));
      const node = queue.querySelectorAll(".alarm")[selected];
      if (node) node.scrollIntoView({ block: "nearest" });
    }

    document.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
      const alarm = alarms[selected];
      const node = queue.querySelectorAll(".alarm")[selected];
      if (event.key === "j") { selected = Math.min(selected + 1, alarms.length - 1); mark(); }
      else if (event.key === "k") { selected = Math.max(selected - 1, 0); mark(); }
      else if (!alarm || !canLabel) return;
      else if (event.key === "f") verdict(alarm, "false_positive", node.querySelector(".note").value);
      else if (event.key === "c" && !node.querySelector(".verdict-confirm").disabled) verdict(alarm, node.querySelector(".fault-class").value, node.querySelector(".note").value);
      else if (event.key === "a") acknowledge(alarm);
      else if (event.key === "n") { event.preventDefault(); node.querySelector(".note").focus(); }
    });

    const jobsBox = document.getElementById("jobs");
    async function pollJobs() {
      let jobs;
      try { jobs = items(await api("GET", "/v1/jobs?limit=10"), "jobs"); } catch (e) { return; }
      const recent = jobs.filter((j) => j.status === "queued" || j.status === "running" || (j.finished_at && Date.now() - Date.parse(j.finished_at) < 10 * 60 * 1000));
      jobsBox.replaceChildren();
      jobsBox.classList.toggle("muted", !recent.length);
      if (!recent.length) { jobsBox.textContent = "No retrain queued."; return; }
      for (const job of recent) {
        const s = byId[job.series_id];
        const text = job.status === "queued" && job.not_before ? `queued, waits for quiet until ${stamp(toSeconds(job.not_before))}`
          : job.status === "succeeded" ? `succeeded: v${job.model_version}${job.metrics && job.metrics.activated === false ? " (kept as candidate)" : ""}` : job.status;
        jobsBox.append(el("div", { class: "job", "data-job": job.id, "data-status": job.status },
          el("div", { text: `${s ? s.name : "series " + job.series_id} · job ${job.id} (${job.reason})` }),
          el("progress", { max: "1", value: String(job.status === "succeeded" ? 1 : job.progress) }),
          el("div", { class: "muted", text })));
      }
    }
    pick.addEventListener("change", () => refresh(true));
    refresh(true); pollJobs();
    setInterval(() => refresh(false), 10000);
    setInterval(pollJobs, 2000);
  }

  // -- models --------------------------------------------------------------------------------
  if (page === "models") {
    const seriesId = body.dataset.seriesId;
    const box = document.getElementById("train-status");
    const bar = document.getElementById("train-progress");
    const text = document.getElementById("train-text");
    const train = document.getElementById("train-now");

    function follow(job) {
      box.hidden = false;
      box.dataset.job = job.id;
      clearTimeout(follow.timer);
      const tick = async () => {
        let now;
        try { now = await api("GET", `/v1/jobs/${job.id}`); } catch (error) { text.textContent = error.message; return; }
        bar.value = now.status === "succeeded" ? 1 : now.progress;
        box.dataset.status = now.status;
        // A retrain queued by verdicts waits for quiet: Train now starts it at once.
        if (train) train.disabled = now.status !== "queued";
        if (now.status === "succeeded") {
          const note = now.metrics && now.metrics.activated === false ? ` kept as a candidate: ${now.metrics.note || ""}` : " is now active";
          text.textContent = `Job ${now.id} done: v${now.model_version}${note}`;
          setTimeout(() => location.reload(), 1500);
        } else if (now.status === "failed") {
          text.textContent = `Job ${now.id} failed: ${now.error}`;
          if (train) train.disabled = false;
        } else {
          text.textContent = `Job ${now.id} ${now.status}` + (now.status === "running" ? ` · ${Math.round(now.progress * 100)} %` : now.not_before ? ` · starts after ${stamp(toSeconds(now.not_before))}` : "");
          follow.timer = setTimeout(tick, 700);
        }
      };
      tick();
    }

    if (train) {
      train.addEventListener("click", async () => {
        try { follow(await api("POST", `/v1/series/${seriesId}/train`)); } catch (error) { toast("Training refused: " + error.message, true); }
      });
    }
    document.querySelectorAll("button.activate").forEach((button) => {
      button.addEventListener("click", async () => {
        try {
          await api("POST", `/v1/series/${seriesId}/models/${button.dataset.version}/activate`);
          toast(`v${button.dataset.version} is active`);
          setTimeout(() => location.reload(), 600);
        } catch (error) { toast("Refused: " + error.message, true); }
      });
    });
    if (seriesId) {
      api("GET", `/v1/jobs?series_id=${seriesId}&limit=1`).then((answer) => {
        const jobs = items(answer, "jobs");
        if (jobs.length && (jobs[0].status === "queued" || jobs[0].status === "running")) follow(jobs[0]);
      }).catch(() => {});
    }
  }
})();
