// Small DOM helpers: element creation without innerHTML, and formatting.

/**
 * Create an element: h("button", {type: "button", onclick: f}, "Text", child...).
 * Attributes starting with "on" become listeners; `class` / `dataset` / boolean values work
 * as expected. Children may be strings, nodes, arrays, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value") {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: `headings`, then one row of `cells(row)` (strings or nodes) per row. */
export function table(headings, rows, cells) {
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, cells(row).map((cell) => h("td", {}, cell))))),
  );
}

/** A button that destroys something: its visible `text`, its accessible `label`. */
export function dangerButton(text, label, onclick) {
  return h("button", { type: "button", class: "danger", "aria-label": label, onclick }, text);
}

let ids = 0;

/** A labelled form field: returns the wrapper; `.input` is the control. */
export function field(label, control, hint) {
  const id = control.id || `f${++ids}`;
  control.id = id;
  const wrap = h("div", { class: "field" }, h("label", { for: id }, label), control);
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    wrap.append(h("small", { id: hintId, class: "muted" }, hint));
  }
  wrap.input = control;
  return wrap;
}

/** "2 Jan 2026, 14:03" in the reader's locale; "" for nothing. */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** A status badge. */
export function badge(status) {
  return h("span", { class: `badge s-${status || "none"}` }, (status || "none").replace("_", " "));
}

/** "$0.0123" */
export function dollars(value) {
  if (value === null || value === undefined) return "–";
  return `$${Number(value).toFixed(value < 1 ? 4 : 2)}`;
}
