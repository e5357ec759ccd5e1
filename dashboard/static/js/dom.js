// Small DOM helpers shared by the views.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** A table from a header row and data rows (numbers formatted). */
export function table(header, rows, {id} = {}) {
  return el("table", {id},
    el("thead", {}, el("tr", {}, header.map((h) => el("th", {text: h})))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {text: formatCell(c)}))))));
}

export function formatCell(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(4);
}

export function fillSelect(select, options, value, {any} = {}) {
  select.replaceChildren();
  if (any !== undefined) select.append(el("option", {value: "", text: any}));
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    select.append(el("option", {value: v, text: label}));
  }
  select.value = value;
  if (select.value !== value && any === undefined && options.length) select.selectedIndex = 0;
  return select.value;
}

/** "20131015" -> "2013-10-15" */
export function isoDate(d) {
  return `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6, 8)}`;
}
