// Supervision (reviewer; flags also auditor): the review queue of held settlements, each
// approved or rejected with a reason (a rejection reverses the settlement), and the
// supervision flags, marked handled with a note.
import { api, hasRole } from "./api.js";
import { t } from "./i18n.js";
import { askReason, autoTable, badge, cell, clear, facts, field, fieldLabel, form, h, notice, pager, query, section, select, table, today } from "./ui.js";

export async function reviewsPage(el) {
  const results = h("div", { "data-testid": "review-results" });
  let status = "pending";
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/reviews${query({ status, page, page_size: 50 })}`);
    const items = Array.isArray(data) ? data : data.items;
    clear(results).append(
      table(
        [
          { label: "field.setl_id", value: (r) => h("a", { href: `#/reviews/${r.setl_id}`, "data-setl": r.setl_id }, r.setl_id) },
          { label: "field.review_status", value: (r) => badge(t(`review_status.${r.review_status}`, {}, r.review_status), r.review_status) },
          { label: "field.fixmedins_code", value: (r) => (r.settlement || r).fixmedins_code || "" },
          { label: "field.medfee_sumamt", value: (r) => cell("medfee_sumamt", (r.settlement || r).medfee_sumamt) },
          { label: "field.setl_time", value: (r) => cell("setl_time", (r.settlement || r).setl_time) },
        ],
        items,
        { empty: "reviews.none" },
      ),
      Array.isArray(data) ? "" : pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  el.append(
    h("h1", {}, t("menu.reviews")),
    section(
      "reviews.queue",
      form(
        { class: "inline" },
        [
          field("field.review_status", select("status", ["pending", "approved", "rejected", "withdrawn"].map((s) => [s, t(`review_status.${s}`)]), status)),
          h("button", { type: "submit" }, t("common.search")),
        ],
        async (v) => {
          status = v.status;
          await load(1);
        },
      ),
      results,
    ),
  );
  await load(1);
}

// The review's parts are shown as they come: objects as facts, lists as tables.
function parts(obj, skip) {
  const out = [];
  for (const [key, value] of Object.entries(obj)) {
    if (skip.includes(key)) continue;
    if (Array.isArray(value)) out.push(h("section", { class: "card", "data-part": key }, h("h2", {}, fieldLabel(key)), autoTable(value)));
    else if (value && typeof value === "object") {
      out.push(h("section", { class: "card", "data-part": key }, h("h2", {}, fieldLabel(key)), facts(value)));
      out.push(...parts(Object.fromEntries(Object.entries(value).filter(([, v]) => Array.isArray(v))), []));
    }
  }
  return out;
}

export async function reviewPage(el, setlId) {
  const review = await api("GET", `/v1/reviews/${encodeURIComponent(setlId)}`);
  const status = h("div", { class: "form-status", "data-testid": "review-status" });
  const decide = (decision) => async () => {
    clear(status);
    const reason = await askReason(`reviews.${decision}_title`);
    if (reason === null) return;
    try {
      const result = await api("POST", `/v1/reviews/${encodeURIComponent(setlId)}/${decision}`, { reason });
      clear(el);
      await reviewPage(el, setlId);
      el.querySelector("[data-testid=review-status]").append(
        notice("ok", t(decision === "approve" ? "reviews.approved" : "reviews.rejected", { status: t(`review_status.${result.review_status}`, {}, result.review_status) }), "review-done"),
      );
    } catch (err) {
      status.append(notice("error", `${t(`error.${err.code}`, {}, err.message)} (${err.code})`, "review-error"));
    }
  };
  const pending = review.review_status === "pending";
  el.append(
    h("p", {}, h("a", { href: "#/reviews" }, `← ${t("menu.reviews")}`)),
    h("h1", {}, `${t("reviews.title")} ${setlId} `, badge(t(`review_status.${review.review_status}`, {}, review.review_status), review.review_status)),
    h("section", { class: "card" }, facts(review)),
    pending && hasRole("reviewer")
      ? h(
          "div",
          { class: "actions" },
          h("button", { type: "button", "data-testid": "approve", onclick: decide("approve") }, t("reviews.approve")),
          h("button", { type: "button", class: "danger", "data-testid": "reject", onclick: decide("reject") }, t("reviews.reject")),
        )
      : "",
    status,
    // The settlement as the reviewer sees it: the person only masked (the person part).
    ...parts({ ...review, settlement: review.settlement && { ...review.settlement, psn_no: undefined, card_no: undefined } }, []),
  );
}

export async function flagsPage(el) {
  const results = h("div", { "data-testid": "flag-results" });
  let filters = { from: today(-30), to: today(), handled: "false" };
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/supervision/flags${query({ ...filters, page, page_size: 50 })}`);
    const items = Array.isArray(data) ? data : data.items;
    clear(results).append(
      table(
        [
          { label: "field.flag_id", value: (f) => String(f.flag_id) },
          { label: "field.rule", value: (f) => t(`rule.${f.rule}`, {}, f.rule) },
          { label: "field.setl_id", value: (f) => f.setl_id },
          { label: "field.fixmedins_code", value: (f) => f.fixmedins_code },
          { label: "field.details", value: (f) => cell("details", f.details) },
          { label: "field.created_at", value: (f) => cell("created_at", f.created_at) },
          {
            label: "field.handled",
            value: (f) =>
              f.handled
                ? h("span", {}, badge(t("flags.handled"), "ok"), " ", f.handled_note || "", f.handled_by ? ` — ${f.handled_by_name || f.handled_by}` : "")
                : hasRole("reviewer")
                  ? h("button", { type: "button", "data-testid": "handle", onclick: () => handle(f) }, t("flags.mark_handled"))
                  : t("common.no"),
          },
        ],
        items,
        { empty: "flags.none", rowAttrs: (f) => ({ "data-flag": f.flag_id }) },
      ),
      Array.isArray(data) ? "" : pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  const handle = async (flag) => {
    const note = await askReason("flags.note_title");
    if (note === null) return;
    try {
      await api("POST", `/v1/supervision/flags/${flag.flag_id}/handle`, { note });
      await load(1);
    } catch (err) {
      results.prepend(notice("error", `${err.code}: ${err.message}`, "flag-error"));
    }
  };
  el.append(
    h("h1", {}, t("menu.flags")),
    section(
      "flags.search",
      form(
        { class: "inline", "data-testid": "flag-filter" },
        [
          field("field.rule", select("rule", [["", t("common.any")], ...["PHARMACY_FREQUENCY", "LARGE_CLAIM", "CARD_AT_TWO_FACILITIES"].map((r) => [r, t(`rule.${r}`)])])),
          field("common.from", h("input", { type: "date", name: "from", value: filters.from })),
          field("common.to", h("input", { type: "date", name: "to", value: filters.to })),
          field("field.fixmedins_code", h("input", { name: "fixmedins_code", maxlength: 20 })),
          field("field.handled", select("handled", [["false", t("flags.open")], ["true", t("flags.handled")], ["", t("common.any")]], "false")),
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
