// The public fund-report page: the published snapshots (aggregates only), their charts and
// CSV files, read from /public/reports without any login.
import { currentLang, loadLang, setLang, t } from "./i18n.js";
import { fundCharts } from "./page-reports.js";
import { autoTable, cell, clear, fieldLabel, h, notice, section } from "./ui.js";

const view = () => document.getElementById("view");

async function getJson(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok) throw new Error(`${resp.status} ${path}`);
  return resp.json();
}

function snapshot(figures) {
  // Income is one object of its own: its figures sit beside the others.
  const { income, ...rest } = figures;
  const report = { ...(income ? { account_credits: income.account_credits, account_credit_amount: income.amount } : {}), ...rest };
  const scalars = Object.entries(report).filter(([, v]) => v === null || typeof v !== "object");
  const lists = Object.entries(report).filter(([, v]) => Array.isArray(v) && v.length && typeof v[0] === "object");
  return [
    section("public.figures", h("dl", { class: "facts" }, scalars.map(([k, v]) => [h("dt", {}, fieldLabel(k)), h("dd", {}, cell(k, v))]))),
    fundCharts(report),
    lists.length ? section("public.tables", ...lists.map(([k, v]) => h("div", {}, h("h3", {}, fieldLabel(k)), autoTable(v)))) : "",
  ];
}

async function render() {
  const el = clear(view());
  el.append(h("h1", {}, t("public.title")), h("p", { class: "help" }, t("public.intro")));
  const data = await getJson("/public/reports");
  const items = Array.isArray(data) ? data : data.items || data.reports || [];
  if (!items.length) {
    el.append(notice("info", t("public.none"), "public-none"));
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1)) || items[0].report_id;
  const list = h(
    "ul",
    { class: "report-list", "data-testid": "public-reports" },
    items.map((r) =>
      h(
        "li",
        { class: r.report_id === wanted ? "active" : "" },
        h("a", { href: `#${encodeURIComponent(r.report_id)}` }, r.title),
        ` · ${t("public.period")} ${r.period_from} – ${r.period_to} · `,
        h("a", { href: `/public/reports/${encodeURIComponent(r.report_id)}.csv`, "data-testid": "public-csv" }, t("public.csv")),
      ),
    ),
  );
  el.append(list);
  const chosen = items.find((r) => r.report_id === wanted) || items[0];
  const report = await getJson(`/public/reports/${encodeURIComponent(chosen.report_id)}`);
  el.append(
    h("section", { class: "card", "data-testid": "public-report", "data-report": chosen.report_id }, h("h2", {}, chosen.title), h("p", {}, `${t("public.published_at")}: ${cell("published_at", chosen.published_at)}`)),
    ...snapshot(report.figures || report),
  );
}

async function start() {
  await loadLang();
  const button = document.getElementById("lang");
  button.textContent = currentLang() === "zh" ? "English" : "中文";
  button.addEventListener("click", async () => {
    setLang(currentLang() === "zh" ? "en" : "zh");
    await loadLang();
    button.textContent = currentLang() === "zh" ? "English" : "中文";
    await render();
  });
  window.addEventListener("hashchange", () => render().catch(fail));
  await render();
  document.body.dataset.ready = "1";
}

function fail(err) {
  view().append(notice("error", String(err.message || err), "public-error"));
  document.body.dataset.ready = "1";
}

start().catch(fail);
