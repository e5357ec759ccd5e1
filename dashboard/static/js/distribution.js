// The distribution view: each series' histogram summed over its dates, as
// bars (overlaid or side by side), a summary table (pings, samples, mean,
// percentiles) and optionally the bucket table. Returns what it drew.

import * as H from "./histogram.js";
import {el, table} from "./dom.js";

const COLORS = ["#0b63ce", "#e8710a", "#188038", "#a142f4", "#d93025", "#12a4af", "#8d6e63", "#f538a0"];

export function renderDistribution(meta, series, state) {
  const {buckets, kind} = meta;
  const n = buckets.length;
  const combined = series.map((s) => ({...s, ...H.combine(s.entries, n)}));
  for (const s of combined) s.summary = H.summary(buckets, s.values, kind, s.pings, s.sum);

  // Drop the empty buckets at both ends (common to all series) so the bars are readable.
  let lo = n, hi = -1;
  for (const s of combined) {
    s.values.forEach((v, i) => {
      if (v) { lo = Math.min(lo, i); hi = Math.max(hi, i); }
    });
  }
  if (hi < 0) { lo = 0; hi = n - 1; }
  const shown = [];
  for (let i = lo; i <= hi; i++) shown.push(i);
  const labels = shown.map((i) => H.formatBound(buckets[i]));
  const measure = state.percent ? (state.cumulative ? "cumulative % of samples" : "% of samples")
    : (state.cumulative ? "cumulative samples" : "samples");
  const drawnValues = (s) => {
    let vals = state.cumulative ? H.cumulative(s.values) : s.values;
    if (state.percent) vals = vals.map((v) => (s.summary.samples ? (100 * v) / s.summary.samples : 0));
    return shown.map((i) => vals[i]);
  };
  for (const s of combined) s.drawn = drawnValues(s);

  // Summary
  const head = ["series", "pings", "samples", "mean", "p5", "p25", "median", "p75", "p95"];
  const rows = combined.map((s) => [s.name, s.summary.pings, s.summary.samples, s.summary.mean,
    s.summary.p5, s.summary.p25, s.summary.p50, s.summary.p75, s.summary.p95]);
  document.getElementById("summary").replaceChildren(table(head, rows, {id: "summary-table"}));

  // Bars
  const side = state.layout === "side" && combined.length > 1;
  const traces = combined.map((s, k) => ({
    type: "bar", name: s.name, x: labels, y: s.drawn, marker: {color: COLORS[k % COLORS.length]},
    xaxis: side ? `x${k ? k + 1 : ""}` : "x", yaxis: side ? `y${k ? k + 1 : ""}` : "y",
    hovertemplate: `%{x}: %{y}<extra>${s.name}</extra>`,
    customdata: shown.map((i) => buckets[i]),
  }));
  const layout = {
    margin: {t: 30, r: 20, b: 80, l: 70}, barmode: "group", bargap: 0.05,
    title: {text: `${meta.metric}: ${measure} per bucket (lower bound)`, font: {size: 14}},
    xaxis: {type: "category", tickangle: -45, automargin: true},
    yaxis: {title: {text: measure}},
    showlegend: combined.length > 1 && !side, legend: {orientation: "h", y: -0.25},
  };
  if (side) {
    layout.grid = {rows: 1, columns: combined.length, pattern: "independent"};
    combined.forEach((s, k) => {
      layout[`xaxis${k ? k + 1 : ""}`] = {type: "category", tickangle: -45, title: {text: s.name}};
    });
  }
  Plotly.react("chart-main", traces, layout, {displaylogo: false, responsive: true});

  // Bucket table
  const tableBox = document.getElementById("table-box");
  if (state.table) {
    const tHead = ["bucket (lower bound)", ...combined.map((s) => `${s.name} ${measure}`)];
    const tRows = shown.map((i, j) => [buckets[i], ...combined.map((s) => s.drawn[j])]);
    tableBox.replaceChildren(el("h3", {text: "Buckets"}), table(tHead, tRows, {id: "bucket-table"}));
  }

  const csvRows = [];
  for (const s of combined) shown.forEach((i, j) => csvRows.push([s.name, buckets[i], s.drawn[j]]));
  return {
    name: `${meta.metric}-distribution`,
    columns: ["series", "bucket", measure.replace(/ /g, "_")],
    rows: csvRows,
    json: {
      view: "distribution", metric: meta.metric, kind, description: meta.description, by: meta.by,
      measure, buckets: shown.map((i) => buckets[i]),
      series: combined.map((s) => ({name: s.name, channel_version: s.cv, compare: s.compareValue, label: s.label,
                                    dates: s.entries.map((e) => e.date), summary: s.summary, values: s.drawn})),
    },
  };
}
