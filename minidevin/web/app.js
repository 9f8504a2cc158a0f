// The console's entry point: hash routes (#/login, #/sessions, #/sessions/ID, #/tasks/ID,
// #/keys, #/secrets), the navigation, and the error alert every view reports to.

import { api, auth, setUnauthorizedHandler } from "./api.js";
import { loginView, registerView } from "./views/auth.js";
import { keysView } from "./views/keys.js";
import { secretsView } from "./views/secrets.js";
import { sessionView, sessionsView } from "./views/sessions.js";
import { taskView } from "./views/task.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const alertBox = document.getElementById("alert");
const alertText = document.getElementById("alert-text");

/** Show an error (an ApiError or any Error) in the alert region. */
export function showError(error) {
  const code = error && error.code && !String(error.code).startsWith("HTTP_") ? ` (${error.code})` : "";
  alertText.textContent = `${error && error.message ? error.message : error}${code}`;
  alertBox.hidden = false;
}

export function clearError() {
  alertText.textContent = "";
  alertBox.hidden = true;
}

const routes = [
  [/^#\/login$/, () => loginView, false],
  [/^#\/register$/, () => registerView, false],
  [/^#\/sessions$/, () => sessionsView, true],
  [/^#\/sessions\/([\w-]+)$/, () => sessionView, true],
  [/^#\/tasks\/([\w-]+)$/, () => taskView, true],
  [/^#\/keys$/, () => keysView, true],
  [/^#\/secrets$/, () => secretsView, true],
];

let leaveView = null; // the current view's clean-up (closes its WebSocket)

function route() {
  const hash = location.hash || "";
  if (hash && !hash.startsWith("#/")) return; // an in-page anchor, not a route
  let match = null;
  let entry = null;
  for (const candidate of routes) {
    match = hash.match(candidate[0]);
    if (match) {
      entry = candidate;
      break;
    }
  }
  if (!entry) {
    location.replace(auth.token ? "#/sessions" : "#/login");
    return;
  }
  const [, view, needsLogin] = entry;
  if (needsLogin && !auth.token) {
    location.replace("#/login");
    return;
  }
  if (!needsLogin && auth.token) {
    location.replace("#/sessions");
    return;
  }
  if (leaveView) leaveView();
  leaveView = null;
  clearError();
  nav.hidden = !auth.token;
  main.replaceChildren();
  const context = { main, params: match.slice(1), showError, clearError };
  try {
    leaveView = view()(context) || null;
  } catch (error) {
    showError(error);
  }
}

async function logOut() {
  try {
    await api("POST", "api/auth/logout");
  } catch (error) {
    if (error.status !== 401) showError(error);
  }
  auth.token = null;
  location.hash = "#/login";
}

setUnauthorizedHandler(() => {
  auth.token = null;
  location.hash = "#/login";
  setTimeout(() => showError(new Error("Your login expired or was revoked; log in again.")));
});

document.getElementById("logout").addEventListener("click", logOut);
document.getElementById("alert-close").addEventListener("click", clearError);
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", route);
route();
