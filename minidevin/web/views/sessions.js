// The sessions list (with each session's latest task status), the new-session form, and a
// session's page: its tasks in order and the form that starts a task (or a follow-up).

import { api } from "../api.js";
import { badge, field, h, replace, when } from "../dom.js";

export function sessionsView({ main, showError }) {
  const list = h("div", { class: "list" }, h("p", { class: "muted" }, "Loading…"));
  const form = newSessionForm(showError);
  const toggle = h("button", { type: "button", "aria-expanded": "false" }, "New session");
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) form.querySelector("input").focus();
  });
  main.append(h("div", { class: "title-row" }, h("h1", {}, "Sessions"), toggle), form, list);

  (async () => {
    try {
      const sessions = await api("GET", "api/sessions");
      if (!sessions.length) {
        replace(list, h("p", { class: "muted" }, "No sessions yet: start one with New session."));
        return;
      }
      const rows = sessions.map((session) => {
        const latest = h("td", {}, h("span", { class: "muted" }, "…"));
        const row = h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/sessions/${session.id}` }, session.name || session.id)),
          h("td", {}, String(session.task_count ?? "")),
          latest,
          h("td", {}, when(session.updated_at || session.created_at)),
        );
        return { session, row, latest };
      });
      replace(
        list,
        h(
          "table",
          { "aria-label": "Sessions" },
          h(
            "thead",
            {},
            h("tr", {}, ["Session", "Tasks", "Latest task", "Updated"].map((t) => h("th", {}, t))),
          ),
          h("tbody", {}, rows.map((r) => r.row)),
        ),
      );
      await Promise.all(
        rows.map(async ({ session, latest }) => {
          const detail = await api("GET", `api/sessions/${session.id}`);
          const last = (detail.tasks || []).at(-1);
          replace(
            latest,
            last
              ? [badge(last.status), " ", h("a", { href: `#/tasks/${last.id}` }, last.description)]
              : h("span", { class: "muted" }, "none"),
          );
        }),
      );
    } catch (error) {
      showError(error);
    }
  })();
}

function newSessionForm(showError) {
  const name = field("Name", h("input", { type: "text", required: true }));
  const directory = field(
    "Working directory",
    h("input", { type: "text", required: true, placeholder: "/path/to/repository" }),
  );
  const policy = field(
    "Approval policy",
    h(
      "select",
      {},
      h("option", { value: "never" }, "never: nothing waits"),
      h("option", { value: "risky" }, "risky: commands that may write wait for approval"),
      h("option", { value: "always" }, "always: every tool call waits"),
    ),
  );
  const secrets = field(
    "Secrets",
    h("input", { type: "text", placeholder: "GITHUB_TOKEN, NPM_TOKEN" }),
    "Names of your secrets, comma separated; tasks get them as environment variables.",
  );
  const mcp = field(
    "MCP servers",
    h("textarea", { rows: 3, placeholder: '[{"name": "files", "command": ["mcp-files"]}]' }),
    "JSON list of MCP tool servers (optional).",
  );
  const form = h(
    "form",
    { class: "card", hidden: true, "aria-labelledby": "new-session-title" },
    h("h2", { id: "new-session-title" }, "New session"),
    name,
    directory,
    policy,
    secrets,
    mcp,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create session")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      name: name.input.value.trim(),
      working_directory: directory.input.value.trim(),
      approval_policy: policy.input.value,
    };
    const names = secrets.input.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (names.length) body.secrets = names;
    const servers = mcp.input.value.trim();
    if (servers) {
      try {
        body.mcp_servers = JSON.parse(servers);
      } catch (error) {
        showError(new Error(`MCP servers is not valid JSON: ${error.message}`));
        mcp.input.focus();
        return;
      }
    }
    try {
      const session = await api("POST", "api/sessions", body);
      location.hash = `#/sessions/${session.id}`;
    } catch (error) {
      showError(error);
    }
  });
  return form;
}

export function sessionView({ main, params, showError }) {
  const [sessionId] = params;
  const heading = h("h1", {}, "Session");
  const facts = h("p", { class: "muted" });
  const tasks = h("ol", { class: "tasks", "aria-label": "Tasks" });
  const form = runTaskForm(sessionId, showError);
  main.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/sessions" }, "Sessions")),
    heading,
    facts,
    h("section", { "aria-labelledby": "tasks-title" }, h("h2", { id: "tasks-title" }, "Tasks"), tasks),
    form,
  );
  (async () => {
    try {
      const session = await api("GET", `api/sessions/${sessionId}`);
      heading.textContent = session.name || "Session";
      replace(
        facts,
        h("code", {}, session.working_directory),
        ` · approval policy ${session.approval_policy || "never"}`,
        session.secrets && session.secrets.length ? ` · secrets ${session.secrets.join(", ")}` : "",
      );
      const list = await api("GET", `api/sessions/${sessionId}/tasks?limit=500`);
      if (!list.length) tasks.append(h("li", { class: "muted" }, "No tasks yet."));
      for (const task of list) {
        tasks.append(
          h(
            "li",
            {},
            badge(task.status),
            " ",
            h("a", { href: `#/tasks/${task.id}` }, task.description),
            h("span", { class: "muted" }, ` · ${when(task.created_at)} · ${task.iterations ?? 0} iterations`),
          ),
        );
      }
      form.querySelector("h2").textContent = list.length ? "Follow-up task" : "Start a task";
    } catch (error) {
      showError(error);
    }
  })();
}

function runTaskForm(sessionId, showError) {
  const description = field(
    "Task",
    h("textarea", { rows: 4, required: true, placeholder: "Fix the failing test in test_calc.py" }),
  );
  const model = field("Model", h("select", {}, h("option", { value: "" }, "Default model")));
  const iterations = field("Max iterations", h("input", { type: "number", min: 1, max: 1000 }));
  const budget = field(
    "Budget (USD)",
    h("input", { type: "number", min: 0, step: "0.01", placeholder: "no limit" }),
  );
  const mode = field(
    "Run mode",
    h(
      "select",
      {},
      h("option", { value: "offline" }, "offline (no network)"),
      h("option", { value: "online" }, "online"),
    ),
  );
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "run-title" },
    h("h2", { id: "run-title" }, "Start a task"),
    description,
    h("div", { class: "grid" }, model, iterations, budget, mode),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Run task")),
  );
  loadModels(model.input).catch(showError);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { description: description.input.value.trim(), run_mode: mode.input.value };
    if (model.input.value) body.model = model.input.value;
    if (iterations.input.value) body.max_iterations = Number(iterations.input.value);
    if (budget.input.value) body.max_cost_usd = Number(budget.input.value);
    try {
      const task = await api("POST", `api/sessions/${sessionId}/tasks`, body);
      location.hash = `#/tasks/${task.id}`;
    } catch (error) {
      showError(error);
    }
  });
  return form;
}

/** Fill the model select: models of configured providers first, the default selected. */
async function loadModels(select) {
  const [models, providers] = await Promise.all([
    api("GET", "api/models"),
    api("GET", "api/providers"),
  ]);
  const configured = new Set(
    (providers.providers || []).filter((p) => p.configured).map((p) => p.id),
  );
  const sorted = [...(models.models || [])].sort(
    (a, b) => Number(configured.has(b.provider)) - Number(configured.has(a.provider)),
  );
  const groups = [
    ["Configured", sorted.filter((m) => configured.has(m.provider))],
    ["Not configured", sorted.filter((m) => !configured.has(m.provider))],
  ];
  select.replaceChildren();
  for (const [label, items] of groups) {
    if (!items.length) continue;
    select.append(
      h(
        "optgroup",
        { label },
        items.map((m) => h("option", { value: m.id }, `${m.name} (${m.provider})`)),
      ),
    );
  }
  if (providers.default_model) select.value = providers.default_model;
}
