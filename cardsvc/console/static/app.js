// The console's shell: who is logged in, the menu their roles allow, and a hash router.
import { hasRole, loadSession, logout, session } from "./api.js";
import { currentLang, loadLang, setLang, t } from "./i18n.js";
import { clear, h, notice } from "./ui.js";
import { loginPage } from "./page-login.js";
import { personPage, personsPage } from "./page-persons.js";
import { facilitiesPage, facilityPage } from "./page-facilities.js";
import { flagsPage, reviewPage, reviewsPage } from "./page-supervision.js";
import { clearingPage, clearingRunPage, reportsPage } from "./page-reports.js";
import { auditPage, gatewayClientsPage, operatorsPage, terminalsPage } from "./page-admin.js";
import { accountPage } from "./page-account.js";

// Each page: the roles that may open it (the API refuses the others anyway).
const ALL = ["administrator", "clerk", "reviewer", "auditor"];
const PAGES = [
  { path: "persons", key: "menu.persons", roles: ["clerk"], list: personsPage, item: personPage },
  { path: "facilities", key: "menu.facilities", roles: ALL, list: facilitiesPage, item: facilityPage },
  { path: "reviews", key: "menu.reviews", roles: ["reviewer"], list: reviewsPage, item: reviewPage },
  { path: "flags", key: "menu.flags", roles: ["reviewer", "auditor"], list: flagsPage },
  { path: "clearing", key: "menu.clearing", roles: ["administrator", "auditor"], list: clearingPage, item: clearingRunPage },
  { path: "reports", key: "menu.reports", roles: ["administrator", "reviewer", "auditor"], list: reportsPage },
  { path: "terminals", key: "menu.terminals", roles: ["administrator"], list: terminalsPage },
  { path: "gateway-clients", key: "menu.gateway_clients", roles: ["administrator"], list: gatewayClientsPage },
  { path: "audit", key: "menu.audit", roles: ["auditor"], list: auditPage },
  { path: "operators", key: "menu.operators", roles: ["administrator"], list: operatorsPage },
  { path: "account", key: "menu.account", roles: ALL, list: accountPage },
];

const view = () => document.getElementById("view");
let loginMessage = null;

function allowed(page) {
  return hasRole(...page.roles);
}

function renderChrome() {
  const menu = document.getElementById("menu");
  const who = document.getElementById("who");
  const out = document.getElementById("logout");
  clear(menu);
  clear(who);
  if (!session.operator) {
    menu.hidden = true;
    out.hidden = true;
    return;
  }
  menu.hidden = false;
  out.hidden = false;
  who.append(
    h("span", { "data-testid": "operator-name" }, session.operator.display_name),
    " · ",
    session.operator.roles.map((r) => t(`role.${r}`)).join("、"),
  );
  const here = location.hash.split("/")[1] || "";
  for (const page of PAGES.filter(allowed)) {
    menu.append(
      h("a", { href: `#/${page.path}`, class: page.path === here ? "active" : "", "data-menu": page.path }, t(page.key)),
    );
  }
}

function firstPage() {
  const page = PAGES.find(allowed);
  return page ? `#/${page.path}` : "#/none";
}

async function route() {
  const el = clear(view());
  if (!session.operator) {
    renderChrome();
    loginPage(el, loginMessage, async () => {
      loginMessage = null;
      // Back to the page asked for before the login (a bookmark, an expired session), else
      // the first page the roles open; a change of hash renders it by itself.
      const asked = PAGES.some((p) => p.path === location.hash.split("/")[1]);
      const target = asked ? location.hash : firstPage();
      if (target !== location.hash) location.hash = target;
      else await route();
    });
    return;
  }
  renderChrome();
  const [, path, ...rest] = location.hash.split("/");
  if (!path) {
    location.replace(firstPage());
    return;
  }
  const page = PAGES.find((p) => p.path === path);
  if (!page) {
    el.append(notice("warn", t("app.no_page"), "no-page"));
    return;
  }
  if (!allowed(page)) {
    el.append(
      h("section", { class: "card", "data-testid": "no-access" }, h("h2", {}, t("app.no_access")), h("p", {}, t("app.no_access_help"))),
    );
    return;
  }
  const id = rest.map(decodeURIComponent).join("/");
  try {
    if (id && page.item) await page.item(el, id);
    else await page.list(el);
  } catch (err) {
    if (err.status === 401) return; // session-lost takes over
    el.append(notice("error", t("app.load_failed", { code: err.code || "", message: err.message || "" }), "load-error"));
  }
}

async function start() {
  await loadLang();
  document.getElementById("lang").textContent = currentLang() === "zh" ? "English" : "中文";
  document.getElementById("lang").addEventListener("click", async () => {
    setLang(currentLang() === "zh" ? "en" : "zh");
    await loadLang();
    document.getElementById("lang").textContent = currentLang() === "zh" ? "English" : "中文";
    await route();
  });
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await logout();
    } catch {
      /* the session is gone either way */
    }
    loginMessage = { kind: "info", text: t("login.logged_out") };
    if (location.hash !== "#/login") location.hash = "#/login";
    else await route();
  });
  window.addEventListener("session-lost", async (ev) => {
    session.operator = null;
    session.csrf = null;
    loginMessage = { kind: "warn", text: t(ev.detail === "SESSION_EXPIRED" ? "login.expired" : "login.session_invalid"), testid: "session-expired" };
    await route();
  });
  window.addEventListener("hashchange", route);
  const lost = await loadSession();
  if (lost === "SESSION_EXPIRED") loginMessage = { kind: "warn", text: t("login.expired"), testid: "session-expired" };
  await route();
  document.body.dataset.ready = "1";
}

start().catch((err) => {
  clear(view()).append(notice("error", t("app.load_failed", { code: err.code || "", message: err.message || String(err) })));
});

