// The page: reads the state from the URL, fills the controls from the API,
// loads the series asked for and hands them to the view. Every answer that
// is not data (nothing known, nothing in range, an API error) becomes a
// sentence in the status line instead of an empty or broken chart.

import * as api from "./api.js";
import * as H from "./histogram.js";
import {el, fillSelect, isoDate} from "./dom.js";
import {parse, serialize, apiFilters, FILTER_KEYS, EVO_STATS} from "./state.js";
import {renderDistribution} from "./distribution.js";
import {renderEvolution} from "./evolution.js";
import {renderOperations} from "./operations.js";
import {toCSV, download} from "./export.js";

const $ = (id) => document.getElementById(id);
const BY_NAME = {build_id: "build ID", submission_date: "submission date"};
const COMPARE_NAME = {os: "OS", architecture: "architecture", child: "process"};

let state = parse(location.search);
let drawn = null;       // {columns, rows, json, name}: what the current view has drawn
let generation = 0;     // a newer refresh makes older ones drop their results

// For tests and the benchmark: the state, what is drawn, and when a refresh is done.
window.__dashboard = {
  get state() { return state; },
  get drawn() { return drawn; },
  done: 0,           // refreshes finished (drawn, empty or error)
  lastDrawMs: null,  // time spent drawing by the last refresh
};

/** The status line; "empty" and "error" also take away what was drawn, so nothing stale stays. */
function setStatus(kind, message) {
  if (kind === "empty" || kind === "error") clearView();
  const s = $("status");
  s.className = "status " + kind;
  s.textContent = message;
  s.dataset.kind = kind;
}

function clearView() {
  Plotly.purge($("chart-main"));
  Plotly.purge($("chart-second"));
  $("chart-main").replaceChildren();
  $("chart-second").replaceChildren();
  $("summary").replaceChildren();
  $("table-box").replaceChildren();
  drawn = null;
}

function update(changes, {push = true} = {}) {
  Object.assign(state, changes);
  const url = location.pathname + serialize(state);
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  refresh();
}

function versionsOf(datesList) {
  const vs = [...new Set(datesList.map((d) => d.version))];
  return vs.sort((a, b) => (parseInt(b, 10) - parseInt(a, 10)) || (b < a ? -1 : b > a ? 1 : 0));
}

function describe(ch, v) {
  const parts = [`${state.metric} on ${ch} ${v}`];
  const range = state.start || state.end
    ? ` between ${state.start ? isoDate(state.start) : "the first date"} and ${state.end ? isoDate(state.end) : "the last date"}`
    : "";
  const filters = FILTER_KEYS.filter((k) => state[k]).map((k) => `${k} ${state[k].replace(",", " ")}`);
  return parts[0] + range + ` (by ${BY_NAME[state.by]})` + (filters.length ? ` with ${filters.join(", ")}` : "");
}

async function refresh() {
  const gen = ++generation;
  const stale = () => gen !== generation;
  document.body.className = "view-" + state.view;
  for (const a of document.querySelectorAll("#views a")) {
    a.classList.toggle("active", a.dataset.view === state.view);
    const q = parse(location.search);
    q.view = a.dataset.view;
    a.href = location.pathname + serialize(q);
  }
  // Charts stay while the next data loads (Plotly.react then redraws them cheaply), except
  // across views, which draw different charts.
  if (document.body.dataset.drawnView !== state.view) clearView();
  document.body.dataset.drawnView = state.view;
  try {
    if (state.view === "ops") {
      $("ops").hidden = false;
      setStatus("loading", "Loading the operations summary…");
      const summary = await api.operations();
      if (stale()) return;
      setStatus("", "");
      renderOperations($("ops"), summary);
      drawn = {name: "operations", json: summary, columns: ["section", "key", "value"],
               rows: opsRows(summary)};
      return;
    }
    $("ops").hidden = true;
    await load(stale);
  } catch (e) {
    if (stale()) return;
    setStatus("error", e instanceof api.ApiError ? `The API failed: ${e.message}` : `Error: ${e.message}`);
    if (!(e instanceof api.ApiError)) console.warn(e);
  } finally {
    if (!stale()) window.__dashboard.done++;
  }
}

function opsRows(summary) {
  const rows = [];
  for (const [code, n] of Object.entries(summary.receiver?.status_codes || {})) rows.push(["status_code", code, n]);
  for (const [reason, n] of Object.entries(summary.converter?.rejected || {})) rows.push(["rejected", reason, n]);
  if (summary.imports) rows.push(["imports", "lag_seconds", summary.imports.lag_seconds]);
  return rows;
}

async function load(stale) {
  setStatus("loading", "Loading channels…");
  $("by").value = state.by;
  const channels = await api.channels(state.by);
  if (stale()) return;
  if (!channels.length) {
    fillSelect($("channel"), [], "");
    setStatus("empty", `No aggregates by ${BY_NAME[state.by]} yet: the database has no channel. ` +
      "Import some pings (telemetry import) and reload.");
    return;
  }
  const channel = fillSelect($("channel"), channels, state.channel || (channels.includes("nightly") ? "nightly" : channels[0]));
  state.channel = channel;
  const channelDates = await api.dates(state.by, channel);
  if (stale()) return;
  const versions = versionsOf(channelDates);
  if (!versions.length) {
    setStatus("empty", `No data for channel ${channel} by ${BY_NAME[state.by]}.`);
    return;
  }
  state.version = fillSelect($("version"), versions, state.version || versions[0]);
  await fillMore(stale);
  const options = await api.filters(channel, state.version);
  if (stale()) return;
  if (options === null) {
    setStatus("empty", `Nothing is known for ${channel} ${state.version}: no filter options.`);
    return;
  }
  fillFilters(options);
  const metrics = [...options.metric].sort();
  $("metric-list").replaceChildren(...metrics.map((m) => el("option", {value: m})));
  if (!state.metric) state.metric = metrics[0] || "";
  $("metric").value = state.metric;
  if (state.metric && !metrics.includes(state.metric)) {
    setStatus("empty", `${state.metric} is not a measure recorded for ${channel} ${state.version} ` +
      `(${metrics.length} are: pick one from the list).`);
    return;
  }
  if (!state.metric) {
    setStatus("empty", `No measures recorded for ${channel} ${state.version}.`);
    return;
  }
  // The date range offered is that of the primary channel and version.
  const own = channelDates.filter((d) => d.version === state.version).map((d) => d.date).sort();
  fillSelect($("start"), own.map((d) => [d, isoDate(d)]), state.start || own[0]);
  fillSelect($("end"), own.map((d) => [d, isoDate(d)]), state.end || own[own.length - 1]);
  const inRange = (d) => (!state.start || d >= state.start) && (!state.end || d <= state.end);

  // Series: each channel/version asked for, times each value of the compare-by dimension.
  const plan = [];
  for (const cv of [`${channel}/${state.version}`, ...state.more]) {
    const [ch, v] = cv.split("/");
    const ds = (ch === channel ? channelDates : await api.dates(state.by, ch))
      .filter((d) => d.version === v && inRange(d.date)).map((d) => d.date).sort();
    if (state.compare) {
      const opts = ch === channel && v === state.version ? options : await api.filters(ch, v);
      const values = opts ? opts[state.compare] : [];
      for (const value of values) plan.push({cv, ch, v, ds, compareValue: value});
    } else {
      plan.push({cv, ch, v, ds});
    }
  }
  if (stale()) return;
  const nDates = new Set(plan.flatMap((p) => p.ds)).size;
  setStatus("loading", `Loading ${state.metric} for ${plan.length} series over ${nDates} dates…`);
  const answers = await Promise.all(plan.map((p) => {
    if (!p.ds.length) return null;
    const overrides = state.compare ? {[state.compare]: p.compareValue} : {};
    return api.aggregates(state.by, p.ch, p.v, p.ds, state.metric, apiFilters(state, overrides));
  }));
  if (stale()) return;
  const found = answers.filter(Boolean);
  if (!found.length) {
    const what = plan.length > 1 ? ` in any of the ${plan.length} series` : "";
    setStatus("empty", `No pings for ${describe(channel, state.version)}${what}.`);
    return;
  }
  const {buckets, kind, description} = found[0];
  // Keyed measures: the keys found in the data; chosen keys become series of their own.
  const labels = [...new Set(found.flatMap((a) => a.data.map((e) => e.label)).filter((l) => l))].sort();
  $("labels-box").hidden = !labels.length;
  fillLabels(labels);
  const chosen = state.labels.filter((l) => labels.includes(l));
  let series = [];
  plan.forEach((p, i) => {
    const a = answers[i];
    if (!a) return;
    if (a.buckets.length !== buckets.length) {
      console.warn(`series ${p.cv} has ${a.buckets.length} buckets, not ${buckets.length}: left out`);
      return;
    }
    const base = [state.more.length ? p.cv : "", (p.compareValue ?? "").replace(",", " ")].filter(Boolean).join(" ");
    const groups = chosen.length ? chosen.map((l) => [l, a.data.filter((e) => e.label === l)]) : [["", a.data]];
    for (const [label, data] of groups) {
      series.push({name: [base, label].filter(Boolean).join(" ") || `${p.ch} ${p.v}`, cv: p.cv,
                   compareValue: p.compareValue ?? null, label, entries: mergeLabels(data)});
    }
  });
  const hiddenDates = series.reduce((n, s) => n + s.entries.filter((e) => e.count < state.sanitize).length, 0);
  series = series.map((s) => ({...s, entries: H.sanitize(s.entries, state.sanitize)})).filter((s) => s.entries.length);
  if (!series.length) {
    setStatus("empty", `Every date of ${describe(channel, state.version)} has fewer than ${state.sanitize} pings, ` +
      "so sanitize hides them all: lower the threshold to see them.");
    return;
  }
  const missing = plan.filter((p, i) => !answers[i]).map((p) => [p.cv, p.compareValue].filter(Boolean).join(" "));
  const notes = [];
  if (hiddenDates) notes.push(`${hiddenDates} date entries under ${state.sanitize} pings hidden (sanitize)`);
  if (missing.length) notes.push(`no pings for ${missing.join(", ")}`);
  const meta = {metric: state.metric, kind, buckets, description, by: state.by};
  const t0 = performance.now();
  $("summary").replaceChildren();
  $("table-box").replaceChildren();
  drawn = state.view === "evo" ? renderEvolution(meta, series, state) : renderDistribution(meta, series, state);
  window.__dashboard.lastDrawMs = performance.now() - t0;
  setStatus("ok", `${state.metric} (${kind}): ${description ? description.replace(/<[^>]*>/g, "") : "no description"}` +
    (notes.length ? ` · ${notes.join(" · ")}` : ""));
}

/** One entry per date: the entries of several keys of a keyed measure added up. */
function mergeLabels(entries) {
  const byDate = new Map();
  for (const e of entries) {
    const cur = byDate.get(e.date);
    if (!cur) byDate.set(e.date, {date: e.date, count: e.count, sum: e.sum, histogram: e.histogram.slice()});
    else {
      cur.count += e.count;
      cur.sum += e.sum;
      e.histogram.forEach((v, i) => (cur.histogram[i] += v));
    }
  }
  return [...byDate.values()].sort((a, b) => (a.date < b.date ? -1 : 1));
}

function fillFilters(options) {
  for (const key of FILTER_KEYS) {
    const values = [...(options[key] || [])].sort();
    const shown = values.map((v) => [v, key === "os" ? v.replace(",", " ") : v]);
    const value = fillSelect($(key), shown, state[key], {any: "any"});
    if (value !== state[key]) state[key] = value;  // a filter value this version does not know
  }
}

function fillLabels(labels) {
  const select = $("labels");
  select.replaceChildren(...labels.map((l) => el("option", {value: l, text: l, selected: state.labels.includes(l)})));
}

async function fillMore(stale) {
  const channels = await api.channels(state.by);
  const options = [];
  for (const ch of channels) {
    for (const v of versionsOf(await api.dates(state.by, ch))) {
      const cv = `${ch}/${v}`;
      if (cv !== `${state.channel}/${state.version}` && !state.more.includes(cv)) options.push([cv, cv]);
    }
  }
  if (stale()) return;
  fillSelect($("more-add"), options, "", {any: "+ channel/version"});
  $("more").replaceChildren(...state.more.map((cv) => el("span", {class: "chip"}, cv,
    el("button", {type: "button", title: `remove ${cv}`, text: "×",
                  onclick: () => update({more: state.more.filter((x) => x !== cv)})}))));
}

function renderStatsPicker() {
  const box = $("stats");
  box.replaceChildren(...EVO_STATS.map((s) => el("label", {},
    el("input", {type: "checkbox", value: s, checked: state.stats.includes(s),
                 onchange: () => update({stats: EVO_STATS.filter((x) => box.querySelector(`input[value=${x}]`).checked)})}),
    " " + (s === "mean" ? "mean" : s === "p50" ? "median" : s))));
}

function exportDrawn(format) {
  if (!drawn) {
    setStatus("empty", "Nothing is drawn, so there is nothing to export.");
    return;
  }
  const base = `${drawn.name}`.replace(/[^A-Za-z0-9_.-]+/g, "_");
  if (format === "csv") download(`${base}.csv`, toCSV(drawn.columns, drawn.rows), "text/csv");
  else download(`${base}.json`, JSON.stringify(drawn.json, null, 1), "application/json");
}

function wire() {
  const on = (id, event, f) => $(id).addEventListener(event, f);
  on("by", "change", (e) => update({by: e.target.value, channel: "", version: "", start: "", end: "", more: []}));
  on("channel", "change", (e) => update({channel: e.target.value, version: "", start: "", end: ""}));
  on("version", "change", (e) => update({version: e.target.value, start: "", end: ""}));
  on("metric", "change", (e) => {
    const m = e.target.value.trim();
    if (m && m !== state.metric) update({metric: m, labels: []});
  });
  on("more-add", "change", (e) => e.target.value && update({more: [...state.more, e.target.value]}));
  on("start", "change", (e) => update({start: e.target.value}));
  on("end", "change", (e) => update({end: e.target.value}));
  for (const key of FILTER_KEYS) on(key, "change", (e) => update({[key]: e.target.value}));
  on("labels", "change", (e) => update({labels: [...e.target.selectedOptions].map((o) => o.value)}));
  on("compare", "change", (e) => update({compare: e.target.value}));
  on("layout", "change", (e) => update({layout: e.target.value}));
  for (const key of ["cumulative", "percent", "table"]) on(key, "change", (e) => update({[key]: e.target.checked}));
  on("sanitize", "change", (e) => update({sanitize: Math.max(0, parseInt(e.target.value, 10) || 0)}));
  on("export-csv", "click", () => exportDrawn("csv"));
  on("export-json", "click", () => exportDrawn("json"));
  for (const a of document.querySelectorAll("#views a")) {
    a.addEventListener("click", (e) => {
      e.preventDefault();
      update({view: a.dataset.view});
    });
  }
  window.addEventListener("popstate", () => {
    state = parse(location.search);
    syncControls();
    refresh();
  });
}

/** Controls that do not depend on the API's answers, set from the state. */
function syncControls() {
  $("compare").value = state.compare;
  $("layout").value = state.layout;
  $("cumulative").checked = state.cumulative;
  $("percent").checked = state.percent;
  $("table").checked = state.table;
  $("sanitize").value = state.sanitize;
  renderStatsPicker();
}

wire();
syncControls();
refresh();
