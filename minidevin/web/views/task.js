// A task's page: status, iterations, tokens and cost against the budget, the plan as a
// checklist, the live timeline, the ask_user answer box, Stop / Resume, and at the end the
// summary, the diff (per file) and the artifacts to download.

import { api, download, text } from "../api.js";
import { renderPatch } from "../diff.js";
import { badge, dollars, field, h, replace } from "../dom.js";
import { TaskStream } from "../stream.js";
import { Timeline } from "../timeline.js";

const LIVE = new Set(["queued", "running", "waiting_input", "waiting_approval"]);
const RESUMABLE = new Set(["failed", "stopped"]);

export function taskView({ main, params, showError, clearError }) {
  const [taskId] = params;
  const state = {
    task: null,
    status: null,
    message: "",
    iteration: 0,
    usage: null,
    plan: null,
    planChanged: false,
    result: null,
    lastError: null,
  };

  // --- the page's parts -------------------------------------------------------------------
  const crumbs = h("p", { class: "crumbs" }, h("a", { href: "#/sessions" }, "Sessions"));
  const title = h("h1", { class: "task-title" }, "Task");
  const statusBadge = h("span", {}, badge("queued"));
  const iterations = h("span", {});
  const tokens = h("span", {});
  const cost = h("span", {});
  const meter = h("meter", { min: 0, max: 1, value: 0, hidden: true, "aria-label": "Budget used" });
  const connection = h("p", { class: "connection", role: "status", "aria-live": "polite" });
  const facts = h(
    "div",
    { class: "facts", "aria-label": "Task status" },
    statusBadge,
    iterations,
    tokens,
    h("span", { class: "cost" }, cost, meter),
  );

  const stop = h("button", { type: "button", class: "danger", hidden: true }, "Stop");
  const resumeMessage = field("Resume message", h("input", { type: "text", placeholder: "optional" }));
  const resumeForm = h(
    "form",
    { class: "row resume", hidden: true, "aria-label": "Resume the task" },
    resumeMessage,
    h("button", { type: "submit" }, "Resume"),
  );
  const question = h("p", { class: "question-text" });
  const answer = field("Answer", h("textarea", { rows: 2 }));
  const askForm = h(
    "form",
    { class: "card ask", hidden: true, "aria-label": "The agent asks" },
    h("h2", {}, "The agent asks"),
    question,
    answer,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Send")),
  );

  const planList = h("ol", { class: "plan" });
  const planRegion = h(
    "section",
    { class: "panel plan-panel", "aria-label": "Plan" },
    h("h2", {}, "Plan"),
    planList,
  );
  replace(planList, h("li", { class: "muted" }, "No plan yet."));
  const timelineList = h("ol", { class: "timeline" });
  const timelineRegion = h(
    "section",
    { class: "panel timeline-panel", "aria-label": "Timeline" },
    h("h2", {}, "Timeline"),
    timelineList,
  );
  const summary = h("section", { class: "card summary", hidden: true, "aria-label": "Summary" });
  const diffBody = h("div", {});
  const diffRegion = h(
    "section",
    { class: "panel", hidden: true, "aria-label": "Diff" },
    h("h2", {}, "Diff"),
    diffBody,
  );
  const artifacts = h("section", { class: "panel", hidden: true, "aria-label": "Artifacts" });

  main.append(
    crumbs,
    title,
    facts,
    connection,
    h("div", { class: "row controls" }, stop, resumeForm),
    askForm,
    h("div", { class: "task-grid" }, planRegion, timelineRegion),
    summary,
    diffRegion,
    artifacts,
  );

  // --- actions --------------------------------------------------------------------------
  async function act(work) {
    try {
      await work();
      clearError();
    } catch (error) {
      showError(error);
    }
  }

  const timeline = new Timeline(timelineList, {
    approve: (callId, box) =>
      act(async () => {
        disable(box);
        await api("POST", `api/tasks/${taskId}/approvals/${encodeURIComponent(callId)}`, {
          decision: "approve",
        });
      }),
    reject: (callId, reason, box) =>
      act(async () => {
        disable(box);
        const body = { decision: "reject" };
        if (reason.trim()) body.reason = reason.trim();
        await api("POST", `api/tasks/${taskId}/approvals/${encodeURIComponent(callId)}`, body);
      }),
  });

  stop.addEventListener("click", () =>
    act(async () => {
      stop.disabled = true;
      await api("POST", `api/tasks/${taskId}/stop`);
    }),
  );
  resumeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(async () => {
      const message = resumeMessage.input.value.trim();
      state.task = await api("POST", `api/tasks/${taskId}/resume`, message ? { message } : {});
      resumeMessage.input.value = "";
      resumeForm.hidden = true;
      summary.hidden = true;
      stream.reopen();
    });
  });
  askForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(async () => {
      const content = answer.input.value.trim();
      if (!content) return;
      askForm.querySelector("button").disabled = true;
      await api("POST", `api/tasks/${taskId}/input`, { content });
      answer.input.value = "";
    });
  });

  // --- events -----------------------------------------------------------------------------
  function onEvent(event) {
    timeline.add(event);
    switch (event.type) {
      case "status":
        state.status = event.status;
        state.message = event.message || "";
        if (event.result) state.result = event.result;
        if (LIVE.has(event.status)) state.result = null;
        if (!LIVE.has(event.status)) timeline.settleAll();
        break;
      case "usage":
        state.usage = event.usage;
        state.iteration = event.iteration ?? state.iteration;
        break;
      case "turn_start":
        state.iteration = event.iteration ?? state.iteration;
        break;
      case "plan_update":
        state.plan = event.plan;
        state.planChanged = true;
        break;
      case "error":
        state.lastError = event;
        break;
      case "resumed":
        state.lastError = null;
        break;
      default:
    }
  }

  function onBatchEnd() {
    const follow = window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
    showFacts();
    if (state.planChanged) {
      state.planChanged = false;
      renderPlan(planList, state.plan);
    }
    if (follow && LIVE.has(state.status)) window.scrollTo(0, document.body.scrollHeight);
  }

  function showFacts() {
    const status = state.status || (state.task && state.task.status) || "queued";
    replace(statusBadge, badge(status));
    const max = state.task && state.task.max_iterations;
    iterations.textContent = `Iteration ${state.iteration}${max ? ` of ${max}` : ""}`;
    const usage = state.usage || (state.task && state.task.usage) || {};
    const total = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
    tokens.textContent = `${total.toLocaleString()} tokens`;
    const budget = state.task && state.task.max_cost_usd;
    cost.textContent = budget
      ? `${dollars(usage.cost_usd || 0)} of ${dollars(budget)} budget`
      : `${dollars(usage.cost_usd || 0)} (no budget)`;
    meter.hidden = !budget;
    if (budget) {
      meter.max = budget;
      meter.value = Math.min(usage.cost_usd || 0, budget);
    }
    stop.hidden = !LIVE.has(status);
    stop.disabled = false;
    resumeForm.hidden = !RESUMABLE.has(status);
    const asking = status === "waiting_input";
    if (asking && askForm.hidden) {
      question.textContent = state.message;
      askForm.querySelector("button").disabled = false;
      askForm.hidden = false;
    } else if (!asking) {
      askForm.hidden = true;
    }
  }

  async function onEnded() {
    showFacts();
    if (state.result || state.lastError) {
      replace(
        summary,
        h("h2", {}, state.result && state.result.success === false ? "Result: not done" : "Result"),
        state.result
          ? h("p", { class: "pre" }, state.result.summary || "")
          : h("p", { class: "error-text" }, `${state.lastError.code}: ${state.lastError.error}`),
      );
      if (state.task && state.task.session_id) {
        summary.append(
          h("p", {}, h("a", { href: `#/sessions/${state.task.session_id}` }, "Start a follow-up task")),
        );
      }
      summary.hidden = false;
    }
    try {
      const list = await api("GET", `api/tasks/${taskId}/artifacts`);
      showArtifacts(list);
      const patch = list.find((a) => a.name === "diff.patch") || list.find((a) => a.type === "diff");
      if (patch) {
        const body = await text(`api/tasks/${taskId}/artifacts/${patch.id}`);
        replace(diffBody, renderPatch(body));
        diffRegion.hidden = false;
      }
    } catch (error) {
      showError(error);
    }
  }

  function showArtifacts(list) {
    if (!list.length) return;
    replace(
      artifacts,
      h("h2", {}, "Artifacts"),
      h(
        "ul",
        { class: "artifacts" },
        list.map((artifact) =>
          h(
            "li",
            {},
            h(
              "button",
              {
                type: "button",
                class: "link",
                onclick: () => act(() => download(`api/tasks/${taskId}/artifacts/${artifact.id}`, artifact.name)),
              },
              `Download ${artifact.name}`,
            ),
            h("span", { class: "muted" }, ` ${(artifact.size / 1024).toFixed(1)} KB`),
          ),
        ),
      ),
    );
    artifacts.hidden = false;
  }

  const stream = new TaskStream(taskId, {
    onEvent,
    onBatchEnd,
    onEnded,
    onState: (message, kind) => {
      connection.textContent = message;
      connection.className = `connection ${kind}`;
    },
    onRefused: () => {
      // a 401 here goes to the login page (api.js); anything else: keep retrying
      api("GET", `api/tasks/${taskId}`).catch(() => {});
    },
  });

  (async () => {
    try {
      state.task = await api("GET", `api/tasks/${taskId}`);
      title.textContent = state.task.description;
      if (state.task.session_id) {
        crumbs.append(" › ", h("a", { href: `#/sessions/${state.task.session_id}` }, "Session"));
      }
      showFacts();
      stream.open();
    } catch (error) {
      showError(error);
    }
  })();

  return () => stream.close();
}

function disable(box) {
  for (const button of box.querySelectorAll("button")) button.disabled = true;
}

const MARKS = { completed: "✓", in_progress: "▶", pending: "○", failed: "✗", skipped: "–" };

function renderPlan(list, plan) {
  const steps = (plan && plan.steps) || [];
  if (!steps.length) {
    replace(list, h("li", { class: "muted" }, "No plan yet."));
    return;
  }
  replace(
    list,
    steps.map((step) =>
      h(
        "li",
        { class: `step ${step.status}`, dataset: { stepId: step.id || "" } },
        h("input", {
          type: "checkbox",
          disabled: true,
          checked: step.status === "completed",
          "aria-label": `${step.description}: ${(step.status || "pending").replace("_", " ")}`,
        }),
        h("span", { class: "mark", "aria-hidden": "true" }, MARKS[step.status] || "○"),
        h("span", { class: "desc" }, step.description),
        h("span", { class: "sr-only" }, ` (${(step.status || "pending").replace("_", " ")})`),
      ),
    ),
  );
}
