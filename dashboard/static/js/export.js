// CSV and JSON export of what a view has drawn: the view hands over a table
// (columns + rows) and the JSON it was drawn from; nothing is recomputed here.

export function toCSV(columns, rows) {
  const cell = (x) => {
    if (x === null || x === undefined) return "";
    const s = typeof x === "number" ? String(x) : String(x);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [columns, ...rows].map((r) => r.map(cell).join(",")).join("\n") + "\n";
}

export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
