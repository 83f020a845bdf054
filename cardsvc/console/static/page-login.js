// Login: the API answers the same LOGIN_FAILED for an unknown login, a wrong password and a
// disabled operator; LOGIN_THROTTLED says when to try again.
import { login } from "./api.js";
import { t } from "./i18n.js";
import { clear, field, h, notice } from "./ui.js";

export function loginPage(el, message, done) {
  const status = h("div", { class: "form-status", "data-testid": "login-status" });
  if (message) status.append(notice(message.kind, message.text, message.testid));
  const user = h("input", { name: "login", autocomplete: "username", required: true, maxlength: 32, "data-testid": "login" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, "data-testid": "password" });
  const submit = h("button", { type: "submit", "data-testid": "login-submit" }, t("login.submit"));
  const formEl = h(
    "form",
    { class: "login", novalidate: true },
    h("h1", {}, t("login.title")),
    field("login.login", user),
    field("login.password", pass),
    submit,
    status,
  );
  formEl.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clear(status);
    if (!user.value.trim() || !pass.value) {
      status.append(notice("error", t("login.missing"), "login-error"));
      return;
    }
    submit.disabled = true;
    try {
      await login(user.value.trim(), pass.value);
      pass.value = "";
      await done();
    } catch (err) {
      let text;
      if (err.code === "LOGIN_FAILED") text = t("login.failed");
      else if (err.code === "LOGIN_THROTTLED") text = t("login.throttled", { seconds: err.details.retry_after || "?" });
      else text = t("app.load_failed", { code: err.code, message: err.message });
      status.append(notice("error", text, "login-error"));
    } finally {
      submit.disabled = false;
    }
  });
  el.append(h("div", { class: "login-wrap" }, formEl));
  user.focus();
}
