// The operations view: what the receiver, converter and importer recorded,
// from the server's /operations/ summary.

import {el, table, formatCell} from "./dom.js";

function chart(id, empty) {
  return empty ? el("p", {id, class: "empty", text: empty}) : el("div", {id, class: "chart"});
}

function seconds(s) {
  if (s === null || s === undefined) return "unknown";
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function renderOperations(box, summary) {
  const r = summary.receiver || {};
  const c = summary.converter || {};
  const im = summary.imports || {};
  box.replaceChildren(...[
    el("p", {class: "generated"}, `As of ${summary.generated_at} (${summary.window_minutes} minutes of stats log)`),
    summary.problems?.length ? el("ul", {class: "problems"}, summary.problems.map((p) => el("li", {text: p}))) : null,
    el("h2", {text: "Submissions per minute by channel"}),
    chart("ops-rate", (r.per_minute || []).length ? null
      : r.stats_log ? "No submissions in the stats log's last window." : "The stats log is not configured."),
    el("h2", {text: "HTTP status codes"}),
    chart("ops-codes", Object.keys(r.status_codes || {}).length ? null
      : r.stats_log ? "No requests in the stats log's last window." : "The stats log is not configured."),
    el("h2", {text: "Converter rejections by reason"}),
    Object.keys(c.rejected || {}).length
      ? table(["reason", "records"], Object.entries(c.rejected).sort((a, b) => b[1] - a[1]), {id: "ops-rejected"})
      : el("p", {text: c.errors_dir ? "No rejected records." : "Converter error output not configured."}),
    el("h2", {text: "Import lag"}),
    table(["", ""], [
      ["newest raw log finished", im.newest_raw_finished || "–"],
      ["newest file imported", im.newest_imported || "–"],
      ["lag", seconds(im.lag_seconds)],
      ["raw logs waiting (finished after the newest import)", im.raw_files_waiting ?? "–"],
      ["files imported / in progress", `${formatCell(im.files_done ?? null)} / ${formatCell(im.files_started ?? null)}`],
    ], {id: "ops-imports"}),
  ].filter(Boolean));
  const perMinute = r.per_minute || [];
  const channels = [...new Set(perMinute.map((p) => p.channel))].sort();
  const rate = channels.map((ch) => {
    const pts = perMinute.filter((p) => p.channel === ch);
    return {type: "bar", name: ch, x: pts.map((p) => p.minute), y: pts.map((p) => p.count)};
  });
  if (rate.length) Plotly.react("ops-rate", rate, {
    barmode: "stack", margin: {t: 10, r: 20, b: 40, l: 60}, xaxis: {type: "date"},
    yaxis: {title: {text: "submissions / min"}}, legend: {orientation: "h"},
  }, {displaylogo: false, responsive: true});
  const codes = Object.entries(r.status_codes || {}).sort();
  if (codes.length) Plotly.react("ops-codes", [{type: "bar", x: codes.map(([k]) => String(k)), y: codes.map(([, v]) => v),
                              marker: {color: codes.map(([k]) => (k < "400" ? "#188038" : k < "500" ? "#e8710a" : "#d93025"))}}], {
    margin: {t: 10, r: 20, b: 40, l: 60}, xaxis: {type: "category", title: {text: "status"}},
    yaxis: {title: {text: "requests"}},
  }, {displaylogo: false, responsive: true});
}
