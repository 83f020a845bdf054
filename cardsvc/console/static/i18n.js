// Chinese by default; the choice of English is remembered in localStorage.
const KEY = "cardsvc.lang";
let strings = {};
let lang = "zh";

export function currentLang() {
  return lang;
}

export async function loadLang(wanted) {
  lang = wanted || localStorage.getItem(KEY) || "zh";
  if (lang !== "zh" && lang !== "en") lang = "zh";
  const resp = await fetch(`/console/static/i18n-${lang}.json`, { credentials: "same-origin" });
  strings = await resp.json();
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  return lang;
}

export function setLang(wanted) {
  localStorage.setItem(KEY, wanted);
}

// t("a.b", {x: 1}) → the string with {x} replaced; the key itself (or `missing`) if unknown.
export function t(key, vars = {}, missing = undefined) {
  let s = strings[key];
  if (s === undefined) return missing === undefined ? key : missing;
  for (const [k, v] of Object.entries(vars || {})) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}
