// Persons (clerk): search by psn_no, name prefix or the full identity number (looked up by
// its keyed hash: only the mask ever comes back), and a person's page with their cards.
import { api } from "./api.js";
import { t } from "./i18n.js";
import { askReason, autoTable, badge, cell, clear, facts, field, form, h, notice, pager, query, section, table } from "./ui.js";

export async function personsPage(el) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const results = h("div", { "data-testid": "person-results" });
  const q = h("input", { name: "q", value: params.get("q") || "", maxlength: 40, placeholder: t("persons.q_hint"), "data-testid": "person-q" });
  const search = async (text, page = 1) => {
    clear(results);
    if (!text) return;
    const data = await api("GET", `/v1/persons${query({ q: text, page, page_size: 20 })}`);
    results.append(
      table(
        [
          { label: "field.psn_no", value: (p) => h("a", { href: `#/persons/${p.psn_no}` }, p.psn_no) },
          { label: "field.psn_name", value: (p) => p.psn_name },
          { label: "field.certno", value: (p) => p.certno },
          { label: "field.gend", value: (p) => t(`gend.${p.gend}`) },
          { label: "field.birth_year", value: (p) => p.birth_year },
          { label: "field.psn_type", value: (p) => t(`psn_type.${p.psn_type}`, {}, p.psn_type) },
        ],
        data.items,
        { empty: "persons.none" },
      ),
      pager(data.page, data.page_size, data.total, (p) => search(text, p).catch(show)),
    );
  };
  const show = (err) => results.append(notice("error", `${err.code}: ${err.message}`));
  el.append(
    h("h1", {}, t("menu.persons")),
    section(
      "persons.search",
      form({ class: "inline", "data-testid": "person-search" }, [field("persons.q", q), h("button", { type: "submit" }, t("common.search"))], async (v) =>
        search((v.q || "").trim()),
      ),
      results,
    ),
  );
  if (params.get("q")) await search(params.get("q"));
}

const CARD_ACTIONS = {
  active: ["report-loss", "cancel"],
  issued: ["activate", "cancel"],
  loss_reported: ["cancel-loss", "cancel"],
  replaced: ["cancel"],
  cancelled: [],
};

function cardBlock(psnNo, card, reload) {
  const status = h("div", { class: "form-status" });
  const actions = (CARD_ACTIONS[card.status] || []).map((action) =>
    h(
      "button",
      {
        type: "button",
        class: action === "cancel" ? "danger" : "",
        "data-action": action,
        onclick: async () => {
          clear(status);
          if (action === "cancel" && (await askReason("cards.confirm_cancel", { input: false })) === null) return;
          try {
            await api("POST", `/v1/persons/${encodeURIComponent(psnNo)}/cards/${encodeURIComponent(card.card_no)}/${action}`);
            await reload();
          } catch (err) {
            status.append(notice("error", `${t(`error.${err.code}`, {}, err.message)} (${err.code})`, "card-error"));
          }
        },
      },
      t(`cards.${action}`),
    ),
  );
  return h(
    "article",
    { class: "card sub", "data-card": card.card_no, "data-status": card.status },
    h("h3", {}, `${t("field.card_no")} ${card.card_no} `, badge(t(`card_status.${card.status}`, {}, card.status), card.status)),
    facts({ ...card, status: t(`card_status.${card.status}`, {}, card.status) }, { skip: ["history", "card_sn", "psn_no", "admdvs"] }),
    h("div", { class: "actions" }, actions),
    status,
    h("h4", {}, t("cards.history")),
    table(
      [
        { label: "field.at", value: (c) => cell("at", c.at) },
        { label: "field.from", value: (c) => (c.from ? t(`card_status.${c.from}`, {}, c.from) : "—") },
        { label: "field.to", value: (c) => t(`card_status.${c.to}`, {}, c.to || "") },
        { label: "field.action", value: (c) => t(`card_action.${c.action}`, {}, c.action || "") },
        { label: "field.actor", value: (c) => c.actor || "" },
      ],
      card.history || [],
    ),
  );
}

export async function personPage(el, psnNo) {
  const overview = await api("GET", `/v1/persons/${encodeURIComponent(psnNo)}/overview`);
  const reload = async () => {
    clear(el);
    await personPage(el, psnNo);
  };
  const person = overview.person || {};
  el.append(
    h("p", {}, h("a", { href: "#/persons" }, `← ${t("menu.persons")}`)),
    h("h1", { "data-testid": "person-name" }, `${person.psn_name || ""} · ${person.psn_no || psnNo}`),
    section("persons.basic", facts(person, { skip: ["insurances"] })),
    section("persons.insurances", autoTable(overview.insurances || person.insurances || [])),
    section("persons.accounts", Array.isArray(overview.accounts) ? autoTable(overview.accounts) : facts(overview.accounts || {})),
    section("persons.credits", autoTable(overview.credits || [])),
    section(
      "persons.cards",
      h("p", { class: "help", "data-testid": "counter-help" }, t("cards.counter_only")),
      (overview.cards || []).length ? (overview.cards || []).map((c) => cardBlock(person.psn_no || psnNo, c, reload)) : h("p", { class: "empty" }, t("cards.none")),
    ),
    section("persons.settlements", autoTable(overview.settlements || [], { keys: ["setl_id", "setl_time", "fixmedins_code", "insutype", "medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay", "status"], skip: ["setldetail", "psn_no", "card_no"] })),
  );
}
