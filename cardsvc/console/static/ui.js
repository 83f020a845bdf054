// Small DOM helpers. Every value from the API goes in as text (textContent), never as HTML.
import { t } from "./i18n.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Amounts in the API are integer fen; shown as yuan with two decimals.
export function yuan(fen) {
  if (fen === null || fen === undefined || fen === "") return "";
  const n = Number(fen);
  const sign = n < 0 ? "-" : "";
  const abs = Math.abs(n);
  const whole = Math.floor(abs / 100).toLocaleString("en-US");
  return `${sign}¥${whole}.${String(abs % 100).padStart(2, "0")}`;
}

export function when(value) {
  if (!value) return "";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(document.documentElement.lang || "zh-CN", { hour12: false });
}

export function today(offsetDays = 0) {
  // Business dates are Asia/Shanghai; en-CA formats as YYYY-MM-DD.
  const d = new Date(Date.now() + offsetDays * 86400000);
  return d.toLocaleDateString("en-CA", { timeZone: "Asia/Shanghai" });
}

// A table: columns [{label, value: row => text|Node, testid?}], rows of objects.
export function table(columns, rows, { empty = "common.empty", rowAttrs } = {}) {
  if (!rows || rows.length === 0) return h("p", { class: "empty" }, t(empty));
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, t(c.label, {}, c.label.replace(/^field\./, "")))))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            rowAttrs ? rowAttrs(row) : {},
            columns.map((c) => h("td", { class: c.class }, c.value(row))),
          ),
        ),
      ),
    ),
  );
}

export function section(titleKey, ...children) {
  return h("section", { class: "card" }, h("h2", {}, t(titleKey)), ...children);
}

export function notice(kind, text, testid) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", "data-testid": testid }, text);
}

export function errorText(err) {
  if (err && err.code) {
    const known = t(`error.${err.code}`, err.details || {}, null);
    return known ? `${known} (${err.code})` : `${err.message || ""} (${err.code})`;
  }
  return String((err && err.message) || err);
}

// A labelled field; returns [wrapper, input].
export function field(labelKey, input) {
  return h("label", { class: "field" }, h("span", {}, t(labelKey)), input);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)),
  );
}

// A form whose submit runs `action(values)`; errors are shown inside the form.
export function form(attrs, children, action) {
  const status = h("div", { class: "form-status" });
  const el = h("form", { ...attrs, novalidate: true }, children, status);
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(status);
    const values = Object.fromEntries(new FormData(el).entries());
    const button = el.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      await action(values, status);
    } catch (err) {
      status.append(notice("error", errorText(err), "form-error"));
    } finally {
      if (button) button.disabled = false;
    }
  });
  return el;
}

// Asks for a reason before a consequential action; resolves to the text or null. With
// `input: false` it only asks to confirm (for actions whose API records no reason).
export function askReason(titleKey, { required = true, input: withInput = true } = {}) {
  return new Promise((resolve) => {
    const input = h("textarea", { name: "reason", rows: 3, maxlength: 500, "data-testid": "reason" });
    const dialog = h("dialog", { class: "dialog" });
    const done = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    const message = h("div", { class: "form-status" });
    dialog.append(
      h("h3", {}, t(titleKey)),
      withInput ? field("common.reason", input) : "",
      message,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: () => done(null) }, t("common.cancel")),
        h(
          "button",
          {
            type: "button",
            "data-testid": "confirm",
            onclick: () => {
              const value = input.value.trim();
              if (withInput && required && !value) {
                clear(message).append(notice("error", t("common.reason_required")));
                return;
              }
              done(value);
            },
          },
          t("common.confirm"),
        ),
      ),
    );
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

export function pager(page, pageSize, total, go) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  return h(
    "div",
    { class: "pager" },
    h("button", { type: "button", class: "secondary", disabled: page <= 1, onclick: () => go(page - 1) }, t("common.prev")),
    h("span", {}, t("common.page_of", { page, pages, total })),
    h("button", { type: "button", class: "secondary", disabled: page >= pages, onclick: () => go(page + 1) }, t("common.next")),
  );
}

export function badge(text, kind = "") {
  return h("span", { class: `badge ${kind}` }, text);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// Money fields (integer fen) by name, shown as yuan.
const MONEY = /(^|_)(amt|amount|balc|balance|total|pay|price|sumamt|payamt|refund|fen|selfpay|dedc)$/;
const TIME = /(^|_)(at|time)$/;

export function fieldLabel(key) {
  return t(`field.${key}`, {}, key);
}

// Coded values shown by their names (the code stays when no name is known).
const CODED = { fund: "fund", facility_type: "facility_type", fixmedins_type: "facility_type", insutype: "insutype", gend: "gend", psn_type: "psn_type", rule: "rule", kind: "kind", review_status: "review_status", type: "facility_type" };

export function cell(key, value) {
  if (value === null || value === undefined) return "";
  if (CODED[key] && typeof value !== "object") return t(`${CODED[key]}.${value}`, {}, String(value));
  if (typeof value === "number" && MONEY.test(key)) return yuan(value);
  if (typeof value === "string" && TIME.test(key)) return when(value);
  if (Array.isArray(value)) return value.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(", ");
  if (typeof value === "object") {
    return Object.entries(value)
      .map(([k, v]) => `${fieldLabel(k)}: ${v !== null && typeof v === "object" ? JSON.stringify(v) : cell(k, v)}`)
      .join("; ");
  }
  if (typeof value === "boolean") return t(value ? "common.yes" : "common.no");
  return String(value);
}

// A table of API objects whose fields are not all known ahead: `keys` first, then the rest
// (minus `skip`), labelled through i18n `field.<name>`.
export function autoTable(rows, { keys = [], skip = [], extra = [], rowAttrs } = {}) {
  const present = new Set((rows || []).flatMap((row) => Object.keys(row)));
  const seen = keys.filter((k) => present.has(k));
  for (const row of rows || []) for (const k of Object.keys(row)) if (!seen.includes(k) && !skip.includes(k)) seen.push(k);
  const columns = seen
    .filter((k) => !skip.includes(k))
    .map((k) => ({ label: `field.${k}`, value: (row) => cell(k, row[k]) }));
  return table([...columns, ...extra], rows, { rowAttrs });
}

// A definition list of one object's fields.
export function facts(obj, { skip = [] } = {}) {
  return h(
    "dl",
    { class: "facts" },
    Object.entries(obj || {})
      .filter(([k, v]) => !skip.includes(k) && v !== undefined && (typeof v !== "object" || v === null))
      .map(([k, v]) => [h("dt", {}, fieldLabel(k)), h("dd", { "data-field": k }, cell(k, v))]),
  );
}
