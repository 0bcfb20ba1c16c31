// syncd dashboard: charts (uPlot) and the live list of changes (server-sent events).
// Every value from the server is set as text (textContent), never as HTML.
"use strict";

function sizeText(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = n, i = 0;
  while (size >= 1024 && i < units.length - 1) { size /= 1024; i++; }
  return i === 0 ? `${n} B` : `${size.toFixed(1)} ${units[i]}`;
}

function whenText(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// the time axis spans the data, at least an hour (one point alone would spread it over years)
function timeRange(times) {
  let lo = Math.min(...times), hi = Math.max(...times);
  if (hi - lo < 3600) { const mid = (lo + hi) / 2; lo = mid - 1800; hi = mid + 1800; }
  return [lo, hi];
}

function drawCharts() {
  const source = document.getElementById("run-chart-data");
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const runTimes = data.runs.map((r) => Date.parse(r.started_at) / 1000);
  const itemTimes = data.items.map((p) => Date.parse(p.at) / 1000);
  const charts = [
    ["chart-duration", "seconds", "#0550ae", runTimes, data.runs.map((r) => r.seconds), "No run yet."],
    ["chart-changes", "changes", "#116329", runTimes, data.runs.map((r) => r.changes), "No run yet."],
    ["chart-items", "items", "#8250df", itemTimes, data.items.map((p) => p.items), "No change recorded yet."],
  ];
  for (const [id, label, color, times, values, empty] of charts) {
    const el = document.getElementById(id);
    if (!el) continue;
    el.textContent = "";
    if (!times.length) { el.textContent = empty; continue; }
    new uPlot({
      width: 360, height: 200,
      scales: { x: { time: true, auto: false, range: timeRange(times) } },
      series: [{}, { label, stroke: color, width: 2, points: { show: true, size: 6 } }],
      axes: [{}, { label, size: 60 }],
      legend: { show: false },
    }, [times, values], el);
  }
}

function followChanges() {
  const table = document.getElementById("recent");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const stream = new EventSource(table.dataset.live);
  stream.addEventListener("change", (event) => {
    const ch = JSON.parse(event.data);
    const row = document.createElement("tr");
    row.className = `change-${ch.kind} fresh`;
    row.dataset.cursor = String(ch.cursor);
    const cells = [
      [String(ch.cursor), "num"], [whenText(ch.at), ""], [ch.kind, ""],
      [ch.key || "", "key"], [sizeText(ch.size), "num"], [ch.source, ""],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      row.appendChild(td);
    }
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
  });
  // a dropped stream reconnects by itself (EventSource), resuming at Last-Event-ID
  window.addEventListener("pagehide", () => stream.close());
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  followChanges();
});
