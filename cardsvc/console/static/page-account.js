// The signed-in operator's own account: who they are, and a new password (the current one
// is asked again; the API may end the operator's other sessions).
import { api, session } from "./api.js";
import { t } from "./i18n.js";
import { facts, field, form, h, notice, section } from "./ui.js";

export async function accountPage(el) {
  const op = session.operator;
  el.append(
    h("h1", {}, t("menu.account")),
    section("account.who", facts({ operator_id: op.operator_id, login: op.login, display_name: op.display_name, roles: op.roles.map((r) => t(`role.${r}`)).join("、"), expires_at: session.expiresAt })),
    section(
      "account.password",
      form(
        { class: "stack", "data-testid": "password-change" },
        [
          field("account.current_password", h("input", { name: "current_password", type: "password", required: true, autocomplete: "current-password" })),
          field("account.new_password", h("input", { name: "new_password", type: "password", required: true, autocomplete: "new-password" })),
          h("button", { type: "submit" }, t("account.change")),
        ],
        async (v, status) => {
          await api("PUT", "/v1/operator-sessions/current/password", { current_password: v.current_password, new_password: v.new_password });
          status.append(notice("ok", t("account.changed"), "password-changed"));
        },
      ),
    ),
  );
}
