// Clearing runs (administrator runs them, auditor reads them; each facility's file is a
// download), the fund report with its charts, and (administrator) publishing a public report.
import { api, hasRole } from "./api.js";
import { barOption, chart } from "./charts.js";
import { t } from "./i18n.js";
import { autoTable, cell, clear, field, form, h, notice, query, section, table, today, yuan } from "./ui.js";

export async function clearingPage(el) {
  const results = h("div", { "data-testid": "clearing-results" });
  let filters = { from: today(-60), to: today() };
  const load = async () => {
    const data = await api("GET", `/v1/clearing/runs${query({ ...filters, page_size: 200 })}`);
    clear(results).append(
      autoTable(data.items || [], {
        keys: ["clearing_date", "created_at", "settlements_cleared", "reversals_netted", "net_total"],
        skip: ["facilities", "held"],
        extra: [{ label: "common.open", value: (r) => h("a", { href: `#/clearing/${r.clearing_date}` }, t("common.open")) }],
      }),
    );
  };
  const parts = [h("h1", {}, t("menu.clearing"))];
  if (hasRole("administrator")) {
    parts.push(
      section(
        "clearing.run",
        h("p", { class: "help" }, t("clearing.run_help")),
        form(
          { class: "inline", "data-testid": "clearing-run" },
          [field("field.clearing_date", h("input", { type: "date", name: "clearing_date", value: today(-1), required: true })), h("button", { type: "submit" }, t("clearing.run_button"))],
          async (v, status) => {
            const run = await api("POST", "/v1/clearing/runs", { clearing_date: v.clearing_date });
            if (run.status === "running") {
              status.append(notice("info", t("clearing.running")));
              return;
            }
            location.hash = `#/clearing/${run.clearing_date}`;
          },
        ),
      ),
    );
  }
  parts.push(
    section(
      "clearing.runs",
      form(
        { class: "inline" },
        [
          field("common.from", h("input", { type: "date", name: "from", value: filters.from })),
          field("common.to", h("input", { type: "date", name: "to", value: filters.to })),
          h("button", { type: "submit" }, t("common.search")),
        ],
        async (v) => {
          filters = v;
          await load();
        },
      ),
      results,
    ),
  );
  el.append(...parts);
  await load();
}

export async function clearingRunPage(el, date) {
  const run = await api("GET", `/v1/clearing/runs/${encodeURIComponent(date)}`);
  el.append(h("p", {}, h("a", { href: "#/clearing" }, `← ${t("menu.clearing")}`)), h("h1", {}, `${t("clearing.run_of")} ${date}`));
  if (run.status === "running") {
    el.append(notice("info", t("clearing.running")));
    return;
  }
  el.append(
    section(
      "clearing.totals",
      h(
        "dl",
        { class: "facts", "data-testid": "clearing-totals" },
        ["settlements_cleared", "reversals_netted", "net_total", "created_at"].map((k) => [h("dt", {}, t(`field.${k}`)), h("dd", { "data-field": k }, cell(k, run[k]))]),
      ),
    ),
    section(
      "clearing.facilities",
      table(
        [
          { label: "field.fixmedins_code", value: (f) => f.fixmedins_code },
          { label: "field.settlements", value: (f) => String(f.settlements) },
          { label: "field.reversals", value: (f) => String(f.reversals) },
          { label: "field.net_amt", value: (f) => yuan(f.net_amt) },
          {
            label: "field.items",
            value: (f) => (f.items || []).map((i) => `${t(`fund.${i.fund}`, {}, i.fund)} ${yuan(i.net_amt)}`).join("；"),
          },
          {
            label: "clearing.file",
            // A plain link: the file comes with Content-Disposition and the browser saves it.
            value: (f) =>
              h("a", { href: `/v1/clearing/runs/${encodeURIComponent(date)}/files/${encodeURIComponent(f.fixmedins_code)}`, "data-file": f.fixmedins_code }, t("clearing.download")),
          },
        ],
        run.facilities,
        { empty: "clearing.nothing", rowAttrs: (f) => ({ "data-facility": f.fixmedins_code }) },
      ),
    ),
  );
  if ((run.held || []).length) el.append(section("clearing.held", autoTable(run.held)));
}

// The fund report's three charts; the data may come from the operators' report
// (by_fund_and_facility_type) or an older one (expenditure).
export function fundCharts(report) {
  const lines = report.by_fund_and_facility_type || report.per_fund_and_facility_type || (report.expenditure || []).map((e) => ({ fund: e.fund, facility_type: e.fixmedins_type, amount: e.amount, count: e.settlements }));
  const funds = [...new Set(lines.map((l) => l.fund))].sort();
  const types = [...new Set(lines.map((l) => l.facility_type))].sort();
  const perDay = report.per_day || [];
  const flags = report.flags_per_rule || [];
  return h(
    "div",
    { class: "charts" },
    chart(
      "charts.expenditure",
      "chart-expenditure",
      barOption(
        funds.map((f) => t(`fund.${f}`, {}, f)),
        types.map((ty) => ({
          name: t(`facility_type.${ty}`, {}, ty),
          data: funds.map((f) => (lines.find((l) => l.fund === f && l.facility_type === ty)?.amount || 0) / 100),
        })),
        { stack: true, yuanAxis: true },
      ),
    ),
    chart(
      "charts.per_day",
      "chart-per-day",
      barOption(
        perDay.map((d) => d.date),
        [{ name: t("field.settlements"), data: perDay.map((d) => d.count) }],
      ),
    ),
    report.flags_per_rule !== undefined
      ? chart(
          "charts.flags",
          "chart-flags",
          barOption(
            flags.map((f) => t(`rule.${f.rule}`, {}, f.rule)),
            [{ name: t("menu.flags"), data: flags.map((f) => f.count) }],
          ),
        )
      : "",
  );
}

export async function reportsPage(el) {
  const body = h("div", { "data-testid": "report" });
  let period = { from: today().slice(0, 8) + "01", to: today() };
  const load = async () => {
    const report = await api("GET", `/v1/reports/funds${query(period)}`);
    clear(body).append(
      h(
        "dl",
        { class: "facts" },
        ["settlements", "reversals", "medfee_sumamt", "expenditure_total", "account_credits", "account_credit_amount", "out_of_limits"].map((k) => [
          h("dt", {}, t(`field.${k}`)),
          h("dd", {}, cell(k, report[k])),
        ]),
      ),
      h("p", {}, h("a", { href: `/v1/reports/funds${query({ ...period, format: "csv" })}`, "data-testid": "report-csv" }, t("reports.csv"))),
      fundCharts(report),
      section("reports.expenditure", autoTable(report.by_fund_and_facility_type || report.expenditure || [])),
    );
  };
  const parts = [
    h("h1", {}, t("menu.reports")),
    section(
      "reports.period",
      form(
        { class: "inline", "data-testid": "report-period" },
        [
          field("common.from", h("input", { type: "date", name: "from", value: period.from })),
          field("common.to", h("input", { type: "date", name: "to", value: period.to })),
          h("button", { type: "submit" }, t("common.show")),
        ],
        async (v) => {
          period = v;
          await load();
        },
      ),
      body,
    ),
  ];
  if (hasRole("administrator")) parts.push(await publishSection());
  el.append(...parts);
  await load();
}

async function publishSection() {
  const list = h("div", { "data-testid": "public-reports" });
  const load = async () => {
    const data = await api("GET", "/v1/public-reports");
    clear(list).append(autoTable(data.items || data.reports || [], { keys: ["report_id", "title", "period_from", "period_to", "published_at"], skip: ["snapshot"] }));
  };
  await load();
  return section(
    "reports.publish",
    h("p", { class: "help" }, t("reports.publish_help")),
    form(
      { class: "inline", "data-testid": "publish" },
      [
        field("field.title", h("input", { name: "title", required: true, maxlength: 200 })),
        field("common.from", h("input", { type: "date", name: "period_from", value: today().slice(0, 8) + "01" })),
        field("common.to", h("input", { type: "date", name: "period_to", value: today() })),
        h("button", { type: "submit" }, t("reports.publish_button")),
      ],
      async (v, status) => {
        await api("POST", "/v1/public-reports", v);
        status.append(notice("ok", t("reports.published")));
        await load();
      },
    ),
    list,
  );
}
