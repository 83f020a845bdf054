// Facilities: every role reads them; a reviewer changes the credit rating (with a reason,
// kept in its history), an administrator suspends or reinstates a facility.
import { api, hasRole } from "./api.js";
import { t } from "./i18n.js";
import { askReason, autoTable, badge, clear, facts, field, form, h, notice, pager, query, section, select, table } from "./ui.js";

export async function facilitiesPage(el) {
  const results = h("div", { "data-testid": "facility-results" });
  let filters = {};
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/facilities${query({ ...filters, page, page_size: 50 })}`);
    clear(results).append(
      table(
        [
          { label: "field.fixmedins_code", value: (f) => h("a", { href: `#/facilities/${encodeURIComponent(f.fixmedins_code)}` }, f.fixmedins_code) },
          { label: "field.fixmedins_name", value: (f) => f.fixmedins_name },
          { label: "field.type", value: (f) => t(`facility_type.${f.type}`, {}, f.type) },
          { label: "field.level", value: (f) => f.level || "" },
          { label: "field.credit_rating", value: (f) => badge(f.credit_rating, `rating-${f.credit_rating}`) },
          { label: "field.status", value: (f) => t(`facility_status.${f.status}`, {}, f.status) },
        ],
        data.items,
      ),
      pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  el.append(
    h("h1", {}, t("menu.facilities")),
    section(
      "facilities.search",
      form(
        { class: "inline" },
        [
          field("common.q", h("input", { name: "q", maxlength: 40 })),
          field("field.type", select("type", [["", t("common.any")], ["hospital", t("facility_type.hospital")], ["pharmacy", t("facility_type.pharmacy")]])),
          field("field.status", select("status", [["", t("common.any")], ["active", t("facility_status.active")], ["suspended", t("facility_status.suspended")]])),
          field("field.credit_rating", select("credit_rating", [["", t("common.any")], ...["A", "B", "C", "D"].map((r) => [r, r])])),
          h("button", { type: "submit" }, t("common.search")),
        ],
        async (v) => {
          filters = v;
          await load(1);
        },
      ),
      results,
    ),
  );
  await load(1);
}

export async function facilityPage(el, code) {
  const path = `/v1/facilities/${encodeURIComponent(code)}`;
  const [facility, history] = await Promise.all([api("GET", path), api("GET", `${path}/credit-ratings`)]);
  const reload = async () => {
    clear(el);
    await facilityPage(el, code);
  };
  const parts = [
    h("p", {}, h("a", { href: "#/facilities" }, `← ${t("menu.facilities")}`)),
    h("h1", {}, `${facility.fixmedins_name} · ${facility.fixmedins_code}`),
    section("facilities.details", facts(facility), h("p", {}, `${t("field.agreements")}: `, (facility.agreements || []).map((a) => t(`insutype.${a}`, {}, a)).join("、") || "—")),
  ];
  if (hasRole("reviewer")) {
    parts.push(
      section(
        "facilities.change_rating",
        h("p", { class: "help" }, t("facilities.rating_help")),
        form(
          { class: "inline", "data-testid": "rating-form" },
          [
            field("field.credit_rating", select("credit_rating", ["A", "B", "C", "D"].map((r) => [r, r]), facility.credit_rating)),
            field("common.reason", h("input", { name: "reason", required: true, maxlength: 500 })),
            h("button", { type: "submit" }, t("common.save")),
          ],
          async (v) => {
            if (!v.reason.trim()) throw new Error(t("common.reason_required"));
            await api("POST", `${path}/credit-rating`, { credit_rating: v.credit_rating, reason: v.reason.trim() });
            await reload();
          },
        ),
      ),
    );
  }
  if (hasRole("administrator")) {
    const next = facility.status === "active" ? "suspended" : "active";
    const status = h("div", { class: "form-status" });
    parts.push(
      section(
        "facilities.suspension",
        h("p", { class: "help" }, t("facilities.suspension_help")),
        h(
          "button",
          {
            type: "button",
            class: next === "suspended" ? "danger" : "",
            "data-testid": "toggle-suspension",
            onclick: async () => {
              if ((await askReason(next === "suspended" ? "facilities.suspend" : "facilities.reinstate", { input: false })) === null) return;
              try {
                await api("PATCH", path, { status: next });
                await reload();
              } catch (err) {
                clear(status).append(notice("error", `${err.code}: ${err.message}`));
              }
            },
          },
          t(next === "suspended" ? "facilities.suspend" : "facilities.reinstate"),
        ),
        status,
      ),
    );
  }
  parts.push(
    h("section", { class: "card", "data-testid": "rating-history" }, h("h2", {}, t("facilities.rating_history")), autoTable(history.items || [], { keys: ["at", "from", "to", "reason", "operator_name", "operator_id"] })),
  );
  el.append(...parts);
}
