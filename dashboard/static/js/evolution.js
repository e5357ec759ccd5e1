// The evolution view: per date, the median, mean and chosen percentiles of
// each series (or "% in bucket" for categorical kinds), and a second chart
// with pings and samples per date. Returns what it drew.

import * as H from "./histogram.js";
import {isoDate} from "./dom.js";

const COLORS = ["#0b63ce", "#e8710a", "#188038", "#a142f4", "#d93025", "#12a4af", "#8d6e63", "#f538a0"];
const DASH = {p50: "solid", mean: "dot", p5: "dashdot", p25: "dash", p75: "dash", p95: "dashdot"};
const STAT_NAME = {p50: "median", mean: "mean", p5: "p5", p25: "p25", p75: "p75", p95: "p95"};
const MAX_CATEGORIES = 8;

export function renderEvolution(meta, series, state) {
  const {buckets, kind} = meta;
  const n = buckets.length;
  const categorical = H.isCategorical(kind);
  const perDate = series.map((s) => ({
    ...s,
    points: s.entries.map((e) => {
      const samples = H.total(e.histogram);
      const p = {date: e.date, pings: e.count, samples};
      if (categorical) {
        e.histogram.forEach((v, i) => (p[`b${i}`] = samples ? (100 * v) / samples : 0));
      } else {
        p.mean = H.mean(buckets, e.histogram, kind);
        for (const q of H.PERCENTILES) p[`p${q}`] = H.percentile(buckets, e.histogram, kind, q);
      }
      return p;
    }),
  }));

  let stats;
  if (categorical) {
    // The buckets that hold samples, largest first, unless chosen in the URL.
    const chosen = state.stats.filter((s) => /^b\d+$/.test(s) && parseInt(s.slice(1), 10) < n);
    if (chosen.length) stats = chosen;
    else {
      const totals = new Array(n).fill(0);
      for (const s of series) for (const e of s.entries) e.histogram.forEach((v, i) => (totals[i] += v));
      stats = totals.map((t, i) => [t, i]).filter(([t]) => t > 0).sort((a, b) => b[0] - a[0])
        .slice(0, MAX_CATEGORIES).map(([, i]) => `b${i}`).sort((a, b) => parseInt(a.slice(1)) - parseInt(b.slice(1)));
    }
  } else {
    stats = state.stats.filter((s) => STAT_NAME[s]);
    if (!stats.length) stats = ["p50"];
  }
  const statName = (s) => (categorical ? `% in ${H.formatBound(buckets[parseInt(s.slice(1), 10)])}` : STAT_NAME[s]);

  const traces = [];
  perDate.forEach((s, k) => {
    const x = s.points.map((p) => isoDate(p.date));
    stats.forEach((stat, j) => {
      traces.push({
        type: "scatter", mode: "lines+markers", name: series.length > 1 ? `${s.name} ${statName(stat)}` : statName(stat),
        x, y: s.points.map((p) => p[stat]),
        line: {color: COLORS[(categorical ? j : k) % COLORS.length], dash: categorical ? (k ? "dash" : "solid") : DASH[stat]},
        marker: {size: 5},
      });
    });
  });
  const unit = categorical ? "% of samples" : meta.metric;
  // Percentages of a category jump by large ratios from near zero: the step is pointed at on scales only.
  const jump = categorical ? null : largestJump(perDate[0].points, stats[0]);
  const annotations = jump ? [{
    x: isoDate(jump.date), y: jump.value, ax: 0, ay: -40, showarrow: true, arrowhead: 2,
    text: `largest change: ${jump.change > 0 ? "+" : ""}${(100 * jump.change).toFixed(0)}% ${statName(stats[0])}` +
          ` at ${state.by === "build_id" ? "build" : ""} ${jump.date}`,
    bgcolor: "#fff8e1", bordercolor: "#e8710a",
  }] : [];
  const xTitle = state.by === "build_id" ? "build ID (date)" : "submission date";
  Plotly.react("chart-main", traces, {
    margin: {t: 30, r: 20, b: 50, l: 70},
    title: {text: `${meta.metric}: ${categorical ? "% in bucket" : stats.map(statName).join(", ")} by ${xTitle}`, font: {size: 14}},
    xaxis: {type: "date"}, yaxis: {title: {text: unit}, rangemode: "tozero"},
    legend: {orientation: "h", y: -0.12}, hovermode: "x unified", annotations,
  }, {displaylogo: false, responsive: true});

  const counts = [];
  perDate.forEach((s, k) => {
    const x = s.points.map((p) => isoDate(p.date));
    const prefix = series.length > 1 ? `${s.name} ` : "";
    counts.push({type: "scatter", mode: "lines", name: `${prefix}pings`, x, y: s.points.map((p) => p.pings),
                 line: {color: COLORS[k % COLORS.length], width: 2}});
    counts.push({type: "scatter", mode: "lines", name: `${prefix}samples`, x, y: s.points.map((p) => p.samples),
                 yaxis: "y2", line: {color: COLORS[k % COLORS.length], width: 1, dash: "dot"}});
  });
  Plotly.react("chart-second", counts, {
    margin: {t: 30, r: 70, b: 40, l: 70},
    title: {text: "pings and samples per date", font: {size: 13}},
    xaxis: {type: "date"}, yaxis: {title: {text: "pings"}, rangemode: "tozero", tickformat: ",d"},
    yaxis2: {title: {text: "samples"}, overlaying: "y", side: "right", rangemode: "tozero", tickformat: ",d"},
    legend: {orientation: "h", y: -0.2},
  }, {displaylogo: false, responsive: true});

  const columns = ["series", "date", "pings", "samples", ...stats.map((s) => statName(s).replace(/ /g, "_"))];
  const rows = [];
  for (const s of perDate) for (const p of s.points) rows.push([s.name, p.date, p.pings, p.samples, ...stats.map((st) => p[st])]);
  return {
    name: `${meta.metric}-evolution`,
    columns,
    rows,
    json: {
      view: "evolution", metric: meta.metric, kind, description: meta.description, by: meta.by,
      stats: stats.map(statName),
      series: perDate.map((s) => ({name: s.name, channel_version: s.cv, compare: s.compareValue, label: s.label,
                                   points: s.points.map((p) => ({date: p.date, pings: p.pings, samples: p.samples,
                                                                  ...Object.fromEntries(stats.map((st) => [statName(st), p[st]]))}))})),
    },
  };
}

/**
 * The biggest lasting step in one line: at each date, the mean of that date
 * and the next few against the mean of the few before, so that one noisy
 * date counts little but a build where a regression lands stands out (the
 * full step is seen only when the windows split exactly there).
 */
export function largestJump(points, stat, window = 3) {
  const mean = (xs) => {
    const v = xs.filter((x) => x !== null && x !== undefined);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
  };
  let best = null;
  for (let i = 2; i <= points.length - 2; i++) {
    const before = mean(points.slice(Math.max(0, i - window), i).map((p) => p[stat]));
    const after = mean(points.slice(i, i + window).map((p) => p[stat]));
    if (!before || after === null) continue;
    const change = (after - before) / Math.abs(before);
    if (!best || Math.abs(change) > Math.abs(best.change)) best = {date: points[i].date, value: points[i][stat], change};
  }
  return best && Math.abs(best.change) >= 0.1 ? best : null;
}
