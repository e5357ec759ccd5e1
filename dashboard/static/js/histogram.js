// Statistics of an aggregate histogram, computed from its buckets the way the
// dashboard client of SPEC 7 (telemetry.js) does, so our numbers match the
// ones analysts saw there: a bucket holds samples >= its lower bound and
// < the next bound; a percentile is interpolated inside its bucket (linearly
// for linear kinds, geometrically for exponential ones); the mean uses each
// bucket's centre. tests/test_dashboard_histogram.py checks this module
// against an independent Python computation.

const LINEAR_KINDS = new Set(["linear", "flag", "boolean", "enumerated"]);

export const PERCENTILES = [5, 25, 50, 75, 95];

/** Kinds whose buckets are categories rather than a scale: shown as "% in bucket". */
export function isCategorical(kind) {
  return kind === "boolean" || kind === "flag" || kind === "enumerated" || kind === "categorical";
}

export function isLinear(kind) {
  return LINEAR_KINDS.has(kind);
}

/** The upper bound of the last bucket, extrapolated from the last two bounds. */
export function lastBucketUpper(buckets, kind) {
  const n = buckets.length;
  if (n === 0) throw new Error("a histogram needs at least one bucket");
  if (n === 1) return buckets[0] + 1;
  const last = buckets[n - 1], before = buckets[n - 2];
  return isLinear(kind) ? last + (last - before) : last * last / before;
}

export function total(values) {
  let t = 0;
  for (const v of values) t += v;
  return t;
}

/** Mean from bucket centres; null when there are no samples or the buckets are labels. */
export function mean(buckets, values, kind) {
  if (typeof buckets[0] !== "number") return null;
  const n = buckets.length;
  const upper = lastBucketUpper(buckets, kind);
  const halfWidth = (upper - buckets[n - 1]) / 2;
  const factor = Math.sqrt(upper / buckets[n - 1]);
  const linear = isLinear(kind);
  let hits = 0, weighted = 0;
  for (let i = 0; i < n; i++) {
    const v = values[i] || 0;
    hits += v;
    weighted += v * (linear ? buckets[i] + halfWidth : buckets[i] * factor);
  }
  return hits > 0 ? weighted / hits : null;
}

/**
 * The p-th percentile (0..100). Walks the buckets until the running count
 * passes p% of the samples (an exact hit on a boundary moves on to the next
 * non-empty bucket: lower bounds are inclusive), then interpolates inside it.
 * null when there are no samples or the buckets are labels.
 */
export function percentile(buckets, values, kind, p) {
  if (typeof buckets[0] !== "number") return null;
  const n = buckets.length;
  const samples = total(values);
  if (!(samples > 0)) return null;
  const upper = lastBucketUpper(buckets, kind);
  const width = upper - buckets[n - 1];
  const factor = upper / buckets[n - 1];
  let remaining = samples * (p / 100);
  let i = 0;
  while (i < n && remaining >= (values[i] || 0)) {
    remaining -= values[i] || 0;
    i++;
  }
  if (i >= n) {
    // p = 100 (or rounding): the top of the last non-empty bucket.
    i = n - 1;
    while (i > 0 && !values[i]) i--;
    remaining = values[i];
  }
  const ratio = remaining / values[i];
  return isLinear(kind) ? buckets[i] + width * ratio : buckets[i] * Math.pow(factor, ratio);
}

/** Pings, samples, mean and the standard percentiles of one histogram. */
export function summary(buckets, values, kind, pings, sum) {
  const out = {pings, samples: total(values), sum, mean: mean(buckets, values, kind)};
  for (const p of PERCENTILES) out["p" + p] = percentile(buckets, values, kind, p);
  return out;
}

/** Element-wise sum of the entries' histograms, with their pings and sums. */
export function combine(entries, nBuckets) {
  const values = new Array(nBuckets).fill(0);
  let pings = 0, sum = 0;
  for (const e of entries) {
    const h = e.histogram;
    for (let i = 0; i < nBuckets; i++) values[i] += h[i] || 0;
    pings += e.count;
    sum += e.sum;
  }
  return {values, pings, sum};
}

export function cumulative(values) {
  let running = 0;
  return values.map((v) => (running += v));
}

/** Entries with at least `threshold` pings (0 keeps everything): the "sanitize" option. */
export function sanitize(entries, threshold) {
  if (!threshold) return entries;
  return entries.filter((e) => e.count >= threshold);
}

/** A bucket bound as a short label: 1200 -> "1.2k", 3e6 -> "3M". */
export function formatBound(x) {
  if (typeof x !== "number") return String(x);
  const a = Math.abs(x);
  const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) {
    if (a >= size) {
      const v = x / size;
      return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)).replace(/\.?0+$/, "") + unit;
    }
  }
  return Number.isInteger(x) ? String(x) : x.toFixed(2).replace(/\.?0+$/, "");
}
