// API keys: list, create (the key shown once, with Copy), revoke.

import { api } from "../api.js";
import { dangerButton, field, h, replace, table, when } from "../dom.js";

export function keysView({ main, showError, clearError }) {
  const list = h("div", { class: "list" }, h("p", { class: "muted" }, "Loading…"));
  const fresh = h("div", { class: "fresh", hidden: true });
  const name = field("Name", h("input", { type: "text", required: true, maxlength: 100 }));
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "new-key-title" },
    h("h2", { id: "new-key-title" }, "New API key"),
    name,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")),
  );

  async function load() {
    try {
      const keys = await api("GET", "api/auth/api-keys");
      if (!keys.length) {
        replace(list, h("p", { class: "muted" }, "No API keys yet."));
        return;
      }
      replace(
        list,
        table(["Name", "Created", "Expires", ""], keys, (key) => [
          key.name,
          when(key.created_at),
          key.expires_at ? when(key.expires_at) : "never",
          dangerButton("Revoke", `Revoke ${key.name}`, () => revoke(key)),
        ]),
      );
    } catch (error) {
      showError(error);
    }
  }

  async function revoke(key) {
    try {
      await api("DELETE", `api/auth/api-keys/${encodeURIComponent(key.id)}`);
      clearError();
      await load();
    } catch (error) {
      showError(error);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const key = await api("POST", "api/auth/api-keys", { name: name.input.value.trim() });
      clearError();
      form.reset();
      const value = h("code", { class: "secret-value" }, key.key);
      const copied = h("span", { role: "status", class: "muted" });
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(key.key);
          copied.textContent = "Copied.";
        } catch {
          getSelection().selectAllChildren(value); // no clipboard access: select it instead
          copied.textContent = "Selected: copy it with your keyboard.";
        }
      });
      replace(
        fresh,
        h("p", {}, `Your new key “${key.name}”. It is shown only this once:`),
        h("div", { class: "row" }, value, copy, copied),
      );
      fresh.hidden = false;
      await load();
    } catch (error) {
      showError(error);
    }
  });

  main.append(
    h("h1", {}, "API keys"),
    h("p", { class: "muted" }, "Keys authenticate scripts with the X-API-Key header."),
    fresh,
    form,
    h("section", { "aria-label": "Your API keys" }, list),
  );
  load();
}
