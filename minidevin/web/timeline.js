// The task's timeline: one list item per shown event, each carrying its `data-seq`
// (streamed text: one item per run of tokens, with the first token's seq). Tool calls are
// cards that their result, approval request and decision join (paired by call_id).

import { editorDiff } from "./diff.js";
import { h } from "./dom.js";

const LONG_OUTPUT_LINES = 12; // longer terminal output is collapsed (<details>)
const LONG_OUTPUT_CHARS = 1500;
const MAX_OUTPUT_CHARS = 20000; // beyond this, output is cut (trajectory.json has it all)
const QUIET = new Set(["usage", "turn_start", "system_prompt", "session_context", "plan_update"]);

export class Timeline {
  /**
   * @param {HTMLElement} list the <ol> items go into
   * @param {{approve: (callId) => void, reject: (callId, reason) => void}} actions
   */
  constructor(list, actions) {
    this.list = list;
    this.actions = actions;
    this.cards = new Map(); // call_id -> the tool card (the latest one)
    this.text = null; // the text node streamed tokens append to, while a run lasts
    this.textItem = null;
    this.turnHadText = false;
  }

  /** Add one event (each event is given once, in seq order). */
  add(event) {
    if (event.type === "token") {
      this.addToken(event);
      return;
    }
    if (event.type === "turn_start") this.turnHadText = false;
    this.text = null; // any other event ends a run of text
    if (QUIET.has(event.type)) return;
    const render = this[`on_${event.type}`];
    if (render) render.call(this, event);
  }

  item(event, kind, ...children) {
    const li = h("li", { class: `item ${kind}`, dataset: { seq: event.seq } }, ...children);
    this.list.append(li);
    return li;
  }

  addToken(event) {
    if (!this.text) {
      this.text = document.createTextNode("");
      this.textItem = this.item(event, "text", h("div", { class: "bubble" }, this.text));
    }
    this.text.appendData(event.content || "");
    this.turnHadText = true;
  }

  on_model_turn(event) {
    // a provider that did not stream: its text arrives whole
    if (!this.turnHadText && event.content) {
      this.item(event, "text", h("div", { class: "bubble" }, event.content));
    }
  }

  on_turn_restart(event) {
    if (this.textItem) this.textItem.classList.add("dropped");
    this.item(
      event,
      "note",
      `Model turn restarted (attempt ${event.attempt} of ${event.max_attempts}): ${event.reason || event.code}`,
    );
  }

  on_status(event) {
    this.item(
      event,
      `status s-${event.status}`,
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("strong", {}, event.status.replace("_", " ")),
      event.message ? ` · ${event.message}` : "",
    );
  }

  on_error(event) {
    this.item(event, "error", h("strong", {}, event.code || "Error"), ": ", event.error || "");
  }

  on_user_message(event) {
    const who = event.source === "task" || !event.source ? "Task" : `You (${event.source})`;
    this.item(event, "user", h("strong", {}, `${who}: `), h("span", { class: "pre" }, event.content));
  }

  on_resumed(event) {
    this.item(event, "note", "Resumed", event.message ? `: ${event.message}` : ".");
  }

  on_tool_call(event) {
    const card = this.item(
      event,
      `tool tool-${event.tool.startsWith("mcp__") ? "mcp" : event.tool}`,
      h("div", { class: "tool-head" }, h("span", { class: "tool-name" }, event.tool), toolSummary(event)),
      toolBody(event),
    );
    this.cards.set(event.call_id, card);
  }

  on_tool_result(event) {
    const card = this.cards.get(event.call_id);
    const part = h(
      "div",
      { class: `result ${event.success ? "result-ok" : "result-failed"}`, dataset: { seq: event.seq } },
      outputBlock(event),
    );
    if (card) {
      card.append(part);
      card.classList.add(event.success ? "succeeded" : "failed");
    } else {
      this.item(event, "tool", h("span", { class: "tool-name" }, event.tool), part);
    }
  }

  on_approval_request(event) {
    const reason = h("input", { type: "text", class: "reason", placeholder: "why not (optional)" });
    const reasonId = `reason-${event.seq}`;
    reason.id = reasonId;
    const approve = h("button", { type: "button", class: "primary" }, "Approve");
    const reject = h("button", { type: "button", class: "danger" }, "Reject");
    approve.addEventListener("click", () => this.actions.approve(event.call_id, box));
    reject.addEventListener("click", () => this.actions.reject(event.call_id, reason.value, box));
    const box = h(
      "div",
      { class: "approval pending", dataset: { seq: event.seq, callId: event.call_id } },
      h("p", {}, h("strong", {}, "Waiting for approval"), event.reason ? `: ${event.reason}` : ""),
      h(
        "div",
        { class: "row" },
        approve,
        reject,
        h("label", { for: reasonId, class: "sr-only" }, "Reason for rejecting"),
        reason,
      ),
    );
    const card = this.cards.get(event.call_id);
    if (card) card.append(box);
    else this.item(event, "tool", h("span", { class: "tool-name" }, event.tool), box);
  }

  on_approval_decision(event) {
    const card = this.cards.get(event.call_id);
    const text =
      event.decision === "approve" ? "Approved." : `Rejected${event.reason ? `: ${event.reason}` : "."}`;
    const part = h("p", { class: `decision ${event.decision}`, dataset: { seq: event.seq } }, text);
    if (card) {
      for (const pending of card.querySelectorAll(".approval.pending")) settle(pending);
      card.append(part);
    } else {
      this.item(event, "note", part);
    }
  }

  /** The task ended: no request still pending can be decided any more. */
  settleAll() {
    for (const pending of this.list.querySelectorAll(".approval.pending")) settle(pending);
  }
}

function settle(box) {
  box.classList.remove("pending");
  for (const control of box.querySelectorAll("button, input")) control.remove();
  for (const label of box.querySelectorAll("label")) label.remove();
}

function toolSummary(event) {
  const input = event.input || {};
  if (event.tool === "terminal") return h("code", { class: "command" }, input.command || "");
  if (event.tool === "editor") return h("span", {}, `${input.command || ""} `, h("code", {}, input.path || ""));
  if (event.tool === "ask_user") return h("span", { class: "question" }, input.question || "");
  if (event.tool === "finish") return h("span", {}, input.success === false ? "gave up" : "finished");
  if (event.tool === "plan") return h("span", { class: "muted" }, `${(input.steps || []).length} steps`);
  return "";
}

function toolBody(event) {
  const input = event.input || {};
  if (event.tool === "terminal" || event.tool === "ask_user") return null;
  if (event.tool === "editor") return editorDiff(input);
  if (event.tool === "finish") return h("p", { class: "pre" }, input.summary || "");
  if (event.tool === "plan") {
    return h(
      "ul",
      { class: "plan-mini" },
      (input.steps || []).map((step) => h("li", {}, `${step.description} (${step.status || "pending"})`)),
    );
  }
  return h("pre", { class: "input" }, JSON.stringify(input, null, 2));
}

/** A tool's output: a monospace block, collapsed when long, cut when huge. */
function outputBlock(event) {
  let output = String(event.output ?? "");
  if (event.tool === "plan" || event.tool === "finish") {
    return event.success ? null : h("p", { class: "pre" }, output);
  }
  if (!output.trim()) return h("p", { class: "muted no-output" }, "(no output)");
  const lines = output.replace(/\n$/, "").split("\n").length;
  let cut = "";
  if (output.length > MAX_OUTPUT_CHARS) {
    cut = `\n… ${output.length - MAX_OUTPUT_CHARS} more characters (trajectory.json has them all)`;
    output = output.slice(0, MAX_OUTPUT_CHARS);
  }
  const pre = h("pre", { class: "output" }, output + cut);
  if (lines <= LONG_OUTPUT_LINES && output.length <= LONG_OUTPUT_CHARS) return pre;
  return h("details", {}, h("summary", {}, `Output (${lines} lines)`), pre);
}
