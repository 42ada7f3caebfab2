// Small DOM helpers. Text always goes in as text nodes (never innerHTML): device names, event data and
// server messages cannot become markup.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

let labels = 0;
// A labelled control: every input has a visible label tied to it.
export function field(label, control, hint) {
  const id = control.id || `f${++labels}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", {}, hint) : null);
}

export function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "never");
  const moment = new Date(iso);
  return h("time", { datetime: iso, title: moment.toISOString() }, ago(moment));
}

export function ago(moment) {
  const seconds = Math.round((Date.now() - moment.getTime()) / 1000);
  if (Math.abs(seconds) < 5) return "just now";
  const [value, unit] =
    Math.abs(seconds) < 90 ? [seconds, "s"] :
    Math.abs(seconds) < 5400 ? [Math.round(seconds / 60), "min"] :
    Math.abs(seconds) < 129600 ? [Math.round(seconds / 3600), "h"] : [Math.round(seconds / 86400), "d"];
  return value >= 0 ? `${value} ${unit} ago` : `in ${-value} ${unit}`;
}

const PLATFORMS = { 0: "Core", 6: "Photon", 8: "P1", 10: "Electron", 12: "Argon", 13: "Boron", 14: "Xenon" };
export const platform = (id) => (id === null || id === undefined ? "" : PLATFORMS[id] ? `${PLATFORMS[id]} (${id})` : `platform ${id}`);
export const GEN2_PLATFORMS = [[0, "Core"], [6, "Photon"], [8, "P1"]];

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export function table(columns, rows, { caption, empty = "Nothing to show." } = {}) {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { "data-label": c.label }, c.cell(row)))))),
    ),
  );
}

export function notice(text, kind = "info") {
  const area = document.getElementById("notice");
  replace(area, text ? h("p", { class: `notice ${kind}` }, text) : null);
}

export function errorText(error) {
  return error && error.message ? error.message : String(error);
}

// A button that runs an action, says it is busy, and reports the outcome next to itself.
export function action(label, run, attrs = {}) {
  const out = h("output", { class: "result", "aria-live": "polite" });
  const button = h("button", {
    type: "button",
    ...attrs,
    onclick: async () => {
      button.disabled = true;
      out.className = "result";
      replace(out, "…");
      try {
        const result = await run();
        replace(out, result === undefined ? "done" : result);
      } catch (error) {
        out.className = "result error";
        replace(out, errorText(error));
      } finally {
        button.disabled = false;
      }
    },
  }, label);
  return h("span", { class: "action" }, button, out);
}

// A confirmation in a modal dialog (keyboard: Escape cancels, focus starts on Cancel).
export function confirmDialog(title, body, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { "aria-labelledby": "dialog-title" },
      h("h2", { id: "dialog-title" }, title),
      body,
      h(
        "form",
        { method: "dialog", class: "buttons" },
        h("button", { value: "cancel", autofocus: true }, "Cancel"),
        h("button", { value: "ok", class: "primary" }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function debounce(fn, wait) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), wait);
  };
}
