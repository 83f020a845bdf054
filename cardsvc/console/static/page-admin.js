// Administration: terminals, gateway clients and operators (administrator); the audit log
// with its verification (auditor).
import { api } from "./api.js";
import { t } from "./i18n.js";
import { askReason, autoTable, badge, cell, clear, field, form, h, notice, pager, query, section, select, table, today } from "./ui.js";

function toggle(label, onclick, testid) {
  return h("button", { type: "button", class: "secondary", onclick, "data-testid": testid }, label);
}

export async function terminalsPage(el) {
  const results = h("div", { "data-testid": "terminal-results" });
  let filters = {};
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/terminals${query({ ...filters, page, page_size: 50 })}`);
    clear(results).append(
      table(
        [
          { label: "field.terminal_id", value: (x) => x.terminal_id },
          { label: "field.kind", value: (x) => t(`kind.${x.kind}`, {}, x.kind) },
          { label: "field.fixmedins_code", value: (x) => x.fixmedins_code || "—" },
          { label: "field.kcv", value: (x) => x.kcv },
          { label: "field.status", value: (x) => badge(t(`status.${x.status}`, {}, x.status), x.status) },
          {
            label: "common.actions",
            value: (x) =>
              toggle(t(x.status === "active" ? "common.disable" : "common.enable"), async () => {
                if (x.status === "active" && (await askReason("terminals.disable_title", { input: false })) === null) return;
                await api("PATCH", `/v1/terminals/${x.terminal_id}`, { status: x.status === "active" ? "disabled" : "active" });
                await load(page);
              }),
          },
        ],
        data.items,
      ),
      pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  const registered = h("div");
  el.append(
    h("h1", {}, t("menu.terminals")),
    section(
      "terminals.register",
      h("p", { class: "help" }, t("terminals.register_help")),
      form(
        { class: "inline" },
        [
          field("field.kind", select("kind", ["counter", "pos", "his", "kiosk"].map((k) => [k, t(`kind.${k}`)]))),
          field("field.fixmedins_code", h("input", { name: "fixmedins_code", maxlength: 20 })),
          h("button", { type: "submit" }, t("terminals.register_button")),
        ],
        async (v) => {
          const body = { kind: v.kind };
          if (v.fixmedins_code) body.fixmedins_code = v.fixmedins_code;
          const reg = await api("POST", "/v1/terminals", body);
          clear(registered).append(
            notice("warn", t("terminals.key_once", { terminal_id: reg.terminal_id, key: reg.terminal_key, kcv: reg.kcv }), "terminal-key"),
          );
          await load(1);
        },
      ),
      registered,
    ),
    section(
      "terminals.list",
      form(
        { class: "inline" },
        [
          field("field.fixmedins_code", h("input", { name: "fixmedins_code", maxlength: 20 })),
          field("field.kind", select("kind", [["", t("common.any")], ...["counter", "pos", "his", "kiosk"].map((k) => [k, t(`kind.${k}`)])])),
          field("field.status", select("status", [["", t("common.any")], ["active", t("status.active")], ["disabled", t("status.disabled")]])),
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

export async function gatewayClientsPage(el) {
  const results = h("div");
  const load = async () => {
    const data = await api("GET", "/v1/gateway-clients");
    const items = data.clients || data.items || [];
    clear(results).append(
      table(
        [
          { label: "field.paasid", value: (c) => c.paasid },
          { label: "field.fixmedins_code", value: (c) => c.fixmedins_code },
          { label: "field.status", value: (c) => badge(t(`status.${c.status}`, {}, c.status), c.status) },
          { label: "field.updated_at", value: (c) => cell("updated_at", c.updated_at) },
          {
            label: "common.actions",
            value: (c) =>
              toggle(t(c.status === "active" ? "common.disable" : "common.enable"), async () => {
                await api("PATCH", `/v1/gateway-clients/${encodeURIComponent(c.paasid)}`, { status: c.status === "active" ? "disabled" : "active" });
                await load();
              }),
          },
        ],
        items,
      ),
    );
  };
  const created = h("div");
  el.append(
    h("h1", {}, t("menu.gateway_clients")),
    section(
      "gateway.create",
      form(
        { class: "inline" },
        [field("field.fixmedins_code", h("input", { name: "fixmedins_code", required: true, maxlength: 20 })), h("button", { type: "submit" }, t("gateway.create_button"))],
        async (v) => {
          const c = await api("POST", "/v1/gateway-clients", { fixmedins_code: v.fixmedins_code });
          clear(created).append(notice("warn", t("gateway.secret_once", { paasid: c.paasid, secret: c.secret })));
          await load();
        },
      ),
      created,
    ),
    section("gateway.list", results),
  );
  await load();
}

export async function auditPage(el) {
  const results = h("div", { "data-testid": "audit-results" });
  const verified = h("div", { "data-testid": "audit-verify" });
  let filters = { from: today(-7), to: today() };
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/audit/entries${query({ ...filters, page, page_size: 50 })}`);
    clear(results).append(
      autoTable(data.items, { keys: ["at", "actor", "action", "object_type", "object_id"] }),
      pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  el.append(
    h("h1", {}, t("menu.audit")),
    section(
      "audit.verify",
      h("p", { class: "help" }, t("audit.verify_help")),
      h(
        "button",
        {
          type: "button",
          "data-testid": "verify",
          onclick: async () => {
            clear(verified).append(h("p", {}, t("common.working")));
            try {
              const r = await api("GET", "/v1/audit/verify");
              clear(verified).append(
                notice(r.ok ? "ok" : "error", t(r.ok ? "audit.intact" : "audit.broken", { entries: r.entries, anchors: r.anchors_checked, settlements: r.settlements_checked }), "verify-result"),
                r.first_bad ? h("pre", {}, JSON.stringify(r.first_bad, null, 2)) : "",
                r.first_changed_settlement ? h("pre", {}, JSON.stringify(r.first_changed_settlement, null, 2)) : "",
              );
            } catch (err) {
              clear(verified).append(notice("error", `${err.code}: ${err.message}`));
            }
          },
        },
        t("audit.verify_button"),
      ),
      verified,
    ),
    section(
      "audit.entries",
      form(
        { class: "inline", "data-testid": "audit-filter" },
        [
          field("common.from", h("input", { type: "date", name: "from", value: filters.from })),
          field("common.to", h("input", { type: "date", name: "to", value: filters.to })),
          field("field.actor", h("input", { name: "actor", maxlength: 64 })),
          field("field.action", h("input", { name: "action", maxlength: 64 })),
          field("field.object_type", h("input", { name: "object_type", maxlength: 64 })),
          field("field.object_id", h("input", { name: "object_id", maxlength: 64 })),
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

const ROLES = ["administrator", "clerk", "reviewer", "auditor"];

function roleChecks(current = []) {
  return h(
    "fieldset",
    { class: "roles" },
    h("legend", {}, t("field.roles")),
    ROLES.map((r) => h("label", { class: "check" }, h("input", { type: "checkbox", name: `role_${r}`, checked: current.includes(r) }), t(`role.${r}`))),
  );
}

function rolesOf(values) {
  return ROLES.filter((r) => values[`role_${r}`]);
}

export async function operatorsPage(el) {
  const results = h("div", { "data-testid": "operator-results" });
  const load = async (page = 1) => {
    const data = await api("GET", `/v1/operators${query({ page, page_size: 50 })}`);
    clear(results).append(
      table(
        [
          { label: "field.operator_id", value: (o) => o.operator_id },
          { label: "field.login", value: (o) => o.login },
          { label: "field.display_name", value: (o) => o.display_name },
          { label: "field.roles", value: (o) => (o.roles || []).map((r) => t(`role.${r}`)).join("、") },
          { label: "field.status", value: (o) => badge(t(`status.${o.status}`, {}, o.status || ""), o.status) },
          { label: "common.actions", value: (o) => operatorActions(o, () => load(page)) },
        ],
        data.items,
      ),
      pager(data.page, data.page_size, data.total, (p) => load(p)),
    );
  };
  el.append(
    h("h1", {}, t("menu.operators")),
    section(
      "operators.create",
      form(
        { class: "stack", "data-testid": "operator-create" },
        [
          field("field.login", h("input", { name: "login", required: true, maxlength: 32, pattern: "[a-z0-9._-]{3,32}" })),
          field("field.display_name", h("input", { name: "display_name", required: true, maxlength: 100 })),
          roleChecks(),
          field("operators.initial_password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
          h("button", { type: "submit" }, t("operators.create_button")),
        ],
        async (v, status) => {
          const op = await api("POST", "/v1/operators", { login: v.login, display_name: v.display_name, roles: rolesOf(v), password: v.password });
          status.append(notice("ok", t("operators.created", { id: op.operator_id })));
          await load(1);
        },
      ),
    ),
    section("operators.list", results),
  );
  await load(1);
}

function operatorActions(op, reload) {
  const status = h("span", { class: "form-status" });
  const run = (fn) => async () => {
    clear(status);
    try {
      await fn();
      await reload();
    } catch (err) {
      status.append(notice("error", `${err.code}: ${err.message}`));
    }
  };
  const editRoles = h(
    "details",
    {},
    h("summary", {}, t("operators.edit")),
    form({ class: "stack" }, [roleChecks(op.roles), h("button", { type: "submit" }, t("common.save"))], async (v) => {
      await api("PATCH", `/v1/operators/${op.operator_id}`, { roles: rolesOf(v) });
      await reload();
    }),
    form(
      { class: "stack" },
      [field("operators.new_password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })), h("button", { type: "submit" }, t("operators.reset_password"))],
      async (v, st) => {
        await api("POST", `/v1/operators/${op.operator_id}/password`, { password: v.password });
        st.append(notice("ok", t("operators.password_reset")));
      },
    ),
  );
  return h(
    "div",
    { class: "actions" },
    toggle(
      t(op.status === "disabled" ? "common.enable" : "common.disable"),
      run(() => api("PATCH", `/v1/operators/${op.operator_id}`, { status: op.status === "disabled" ? "active" : "disabled" })),
    ),
    editRoles,
    status,
  );
}
