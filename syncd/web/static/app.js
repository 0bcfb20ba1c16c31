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

function drawCharts() {
  const source = document.getElementById("run-chart-data");
  if (!source || typeof uPlot === "undefined") return;
  const runs = JSON.parse(source.textContent);
  const times = runs.map((r) => Date.parse(r.started_at) / 1000);
  const charts = [
    ["chart-duration", "seconds", "#0550ae", runs.map((r) => r.seconds)],
    ["chart-changes", "changes", "#116329", runs.map((r) => r.changes)],
  ];
  for (const [id, label, color, values] of charts) {
    const el = document.getElementById(id);
    if (!el) continue;
    el.textContent = "";
    if (!runs.length) { el.textContent = "No run yet."; continue; }
    const width = Math.max(320, Math.min(640, el.parentElement.clientWidth || 480));
    new uPlot({
      width, height: 200,
      series: [{}, { label, stroke: color, width: 2, points: { show: true, size: 6 } }],
      axes: [{}, { label }],
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
