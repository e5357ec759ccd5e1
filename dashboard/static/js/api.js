// The aggregates API of SPEC 7, as the page uses it. Every failure becomes an
// ApiError whose message says which request failed and why, for the page to
// show instead of a broken chart.

const MAX_URL = 4000;  // the client of SPEC 7 keeps URLs under 4094 characters

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

const cache = new Map();

async function getJSON(path, {notFound = "error"} = {}) {
  if (cache.has(path)) return cache.get(path);
  let response;
  try {
    response = await fetch(path, {headers: {Accept: "application/json"}});
  } catch (e) {
    throw new ApiError(`cannot reach the server for ${path}: ${e.message}`, 0);
  }
  if (response.status === 404 && notFound === "null") return null;
  if (!response.ok) {
    let detail = "";
    try {
      const body = await response.json();
      detail = body.description || body.message || body.error || "";
    } catch (e) {
      detail = "";
    }
    throw new ApiError(`${path} answered ${response.status} ${response.statusText}` +
                       (detail ? `: ${detail}` : ""), response.status);
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new ApiError(`${path} did not answer JSON: ${e.message}`, response.status);
  }
  // Answers are small and fixed for a page's life except the aggregates, which are not cached.
  if (!path.includes("?version=")) cache.set(path, body);
  return body;
}

export function channels(by) {
  return getJSON(`/aggregates_by/${by}/channels/`);
}

/** [{version, date}] newest first; [] for an unknown channel. */
export function dates(by, channel) {
  return getJSON(`/aggregates_by/${by}/channels/${encodeURIComponent(channel)}/dates/`);
}

/** The filter options of a channel and version, or null when nothing is known for them. */
export function filters(channel, version) {
  const q = new URLSearchParams({channel, version});
  return getJSON(`/filters/?${q}`, {notFound: "null"});
}

/**
 * One series: the aggregates of `metric` for the dates asked, with the filters
 * given (keys with empty values left out). Splits the dates over several
 * requests when the URL would be too long. Returns null when the API has no
 * data for it (404), else {buckets, kind, description, data}.
 */
export async function aggregates(by, channel, version, dateList, metric, filtersGiven = {}) {
  const base = `/aggregates_by/${by}/channels/${encodeURIComponent(channel)}/?`;
  const extra = new URLSearchParams();
  for (const [k, v] of Object.entries(filtersGiven)) if (v !== undefined && v !== null && v !== "") extra.set(k, v);
  const chunks = [];
  let current = [];
  const lengthOf = (ds) => base.length + 40 + metric.length + version.length + extra.toString().length + ds.length * 9;
  for (const d of dateList) {
    if (current.length && lengthOf(current.concat([d])) > MAX_URL) {
      chunks.push(current);
      current = [];
    }
    current.push(d);
  }
  if (current.length) chunks.push(current);
  let answers;
  try {
    answers = await Promise.all(chunks.map((ds) => {
      const q = new URLSearchParams({version, dates: ds.join(","), metric});
      for (const [k, v] of extra) q.set(k, v);
      return getJSON(base + q.toString(), {notFound: "null"});
    }));
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    // The URL holds every date: name the request by what it asked for instead.
    const asked = [`version=${version}`, `metric=${metric}`, ...[...extra].map(([k, v]) => `${k}=${v}`),
                   `${dateList.length} dates`].join(" ");
    throw new ApiError(e.message.replace(/^\S+ answered/, `${base.slice(0, -1)} (${asked}) answered`), e.status);
  }
  const found = answers.filter((a) => a !== null);
  if (!found.length) return null;
  const out = {buckets: found[0].buckets, kind: found[0].kind, description: found[0].description, data: []};
  for (const a of found) out.data.push(...a.data);
  return out;
}

export function operations() {
  cache.delete("/operations/");
  return getJSON("/operations/");
}
