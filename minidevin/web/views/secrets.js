// Secrets: names and dates only (values are never shown); add or replace, delete.

import { api } from "../api.js";
import { dangerButton, field, h, replace, table, when } from "../dom.js";

export function secretsView({ main, showError, clearError }) {
  const list = h("div", { class: "list" }, h("p", { class: "muted" }, "Loading…"));
  const name = field(
    "Name",
    h("input", { type: "text", required: true, pattern: "[A-Z_][A-Z0-9_]*", autocomplete: "off" }),
    "Like an environment variable: GITHUB_TOKEN. The same name again replaces the value.",
  );
  const value = field(
    "Value",
    h("input", { type: "password", required: true, minlength: 4, autocomplete: "off" }),
  );
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "new-secret-title" },
    h("h2", { id: "new-secret-title" }, "Add a secret"),
    name,
    value,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save secret")),
  );

  async function load() {
    try {
      const secrets = await api("GET", "api/secrets");
      if (!secrets.length) {
        replace(list, h("p", { class: "muted" }, "No secrets yet."));
        return;
      }
      replace(
        list,
        table(["Name", "Created", "Updated", ""], secrets, (secret) => [
          h("code", {}, secret.name),
          when(secret.created_at),
          when(secret.updated_at),
          dangerButton("Delete", `Delete ${secret.name}`, () => remove(secret.name)),
        ]),
      );
    } catch (error) {
      showError(error);
    }
  }

  async function remove(secretName) {
    try {
      await api("DELETE", `api/secrets/${encodeURIComponent(secretName)}`);
      clearError();
      await load();
    } catch (error) {
      showError(error);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "api/secrets", { name: name.input.value.trim(), value: value.input.value });
      clearError();
      form.reset();
      await load();
    } catch (error) {
      showError(error);
    }
  });

  main.append(
    h("h1", {}, "Secrets"),
    h("p", { class: "muted" }, "A session's tasks get the secrets it names as environment variables."),
    form,
    h("section", { "aria-label": "Your secrets" }, list),
  );
  load();
}
