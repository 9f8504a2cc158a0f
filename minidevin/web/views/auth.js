// Log in and register.

import { api, auth } from "../api.js";
import { field, h } from "../dom.js";

/** The login form; a fresh account arrives with ?email prefilled and a note. */
export function loginView({ main, showError }) {
  const email = field("Email", h("input", { type: "email", autocomplete: "username", required: true }));
  const password = field(
    "Password",
    h("input", { type: "password", autocomplete: "current-password", required: true }),
  );
  email.input.value = sessionStorage.getItem("minidevin.email") || "";
  const note = sessionStorage.getItem("minidevin.registered");
  sessionStorage.removeItem("minidevin.registered");
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    note && h("p", { class: "ok", role: "status" }, note),
    email,
    password,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Log in")),
    h("p", {}, "No account yet? ", h("a", { href: "#/register" }, "Register")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = { email: email.input.value.trim(), password: password.input.value };
      const answer = await api("POST", "api/auth/login", body);
      auth.token = answer.access_token;
      sessionStorage.setItem("minidevin.email", body.email);
      location.hash = "#/sessions";
    } catch (error) {
      showError(error);
      button.disabled = false;
    }
  });
  main.append(form);
  (email.input.value ? password.input : email.input).focus();
}

export function registerView({ main, showError }) {
  const name = field("Name", h("input", { type: "text", autocomplete: "name", required: true }));
  const email = field("Email", h("input", { type: "email", autocomplete: "username", required: true }));
  const password = field(
    "Password",
    h("input", { type: "password", autocomplete: "new-password", required: true, minlength: 8 }),
    "At least 8 characters.",
  );
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "register-title" },
    h("h1", { id: "register-title" }, "Create an account"),
    name,
    email,
    password,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Register")),
    h("p", {}, "Have an account? ", h("a", { href: "#/login" }, "Log in")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = {
        name: name.input.value.trim(),
        email: email.input.value.trim(),
        password: password.input.value,
      };
      await api("POST", "api/auth/register", body);
      sessionStorage.setItem("minidevin.email", body.email);
      sessionStorage.setItem("minidevin.registered", "Account created. Log in with it.");
      location.hash = "#/login";
    } catch (error) {
      showError(error);
      button.disabled = false;
    }
  });
  main.append(form);
  name.input.focus();
}
