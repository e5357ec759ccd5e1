// The whole view state lives in the URL's query string, so that a link (or a
// reload) reproduces the view. Defaults are left out of the URL.

export const FILTER_KEYS = ["application", "os", "architecture", "child"];
export const COMPARE_KEYS = ["", "os", "architecture", "child"];
export const EVO_STATS = ["p50", "mean", "p5", "p25", "p75", "p95"];

export const DEFAULTS = {
  view: "dist",          // dist | evo | ops
  by: "build_id",        // build_id | submission_date
  channel: "",
  version: "",
  more: [],              // extra "channel/version" series to compare with
  metric: "",
  start: "",             // YYYYMMDD, inclusive; "" = first date with data
  end: "",
  application: "",
  os: "",                // "NAME,VERSION" or "NAME"
  architecture: "",
  child: "",
  labels: [],            // keys of a keyed measure ([] = all summed... see labelMode)
  compare: "",           // "" | os | architecture | child
  layout: "overlay",     // overlay | side
  cumulative: false,
  table: false,
  percent: false,
  sanitize: 100,         // hide dates with fewer pings than this (0 = show all)
  stats: ["p50", "mean"],
};

const LISTS = new Set(["more", "labels", "stats"]);
const BOOLS = new Set(["cumulative", "table", "percent"]);

export function parse(search) {
  const q = new URLSearchParams(search);
  const state = structuredClone(DEFAULTS);
  for (const key of Object.keys(DEFAULTS)) {
    if (!q.has(key)) continue;
    const raw = q.get(key);
    if (LISTS.has(key)) state[key] = raw === "" ? [] : raw.split("|");
    else if (BOOLS.has(key)) state[key] = raw === "1";
    else if (key === "sanitize") state[key] = Math.max(0, parseInt(raw, 10) || 0);
    else state[key] = raw;
  }
  if (!["dist", "evo", "ops"].includes(state.view)) state.view = "dist";
  if (!["build_id", "submission_date"].includes(state.by)) state.by = "build_id";
  if (!COMPARE_KEYS.includes(state.compare)) state.compare = "";
  state.stats = state.stats.filter((s) => EVO_STATS.includes(s) || /^b\d+$/.test(s));
  return state;
}

export function serialize(state) {
  const q = new URLSearchParams();
  for (const [key, def] of Object.entries(DEFAULTS)) {
    const v = state[key];
    if (LISTS.has(key)) {
      if (JSON.stringify(v) !== JSON.stringify(def)) q.set(key, v.join("|"));
    } else if (BOOLS.has(key)) {
      if (v !== def) q.set(key, v ? "1" : "0");
    } else if (v !== def && v !== undefined) {
      q.set(key, String(v));
    }
  }
  const s = q.toString();
  return s ? "?" + s : "";
}

/** The API filter parameters of a state (os split into os and osVersion as the API wants). */
export function apiFilters(state, overrides = {}) {
  const f = {};
  const merged = {...state, ...overrides};
  for (const k of FILTER_KEYS) if (merged[k]) f[k] = merged[k];
  if (f.os) {
    const [name, version] = f.os.split(",");
    f.os = name;
    if (version) f.osVersion = version;
  }
  return f;
}
