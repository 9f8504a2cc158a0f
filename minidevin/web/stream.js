// A task's event stream over the WebSocket: reconnects by itself after a drop with
// ?after= the last seq seen, hands each event on once (deduplicated by seq), in batches
// of one animation frame so a long history or a fast token stream never blocks the page.

import { streamUrl } from "./api.js";

const FRAME_BUDGET_MS = 10; // work per animation frame before yielding to the browser
const MAX_DELAY_MS = 10000;

export class TaskStream {
  /**
   * @param {string} taskId
   * @param {{onEvent: (event) => void, onBatchEnd: () => void, onState: (text, kind) => void,
   *          onEnded: () => void, onRefused?: () => void}} handlers
   */
  constructor(taskId, handlers) {
    this.taskId = taskId;
    this.handlers = handlers;
    this.lastSeq = 0; // the last seq handed on: the next connection asks for what follows
    this.queuedSeq = 0; // the last seq queued (dedupe happens at arrival)
    this.queue = [];
    this.socket = null;
    this.closed = false;
    this.retries = 0;
    this.dropped = false; // a connection was lost: say so when the next one opens
    this.frame = 0;
    this.timer = 0;
  }

  open() {
    if (this.closed || this.socket) return;
    const socket = new WebSocket(streamUrl(this.taskId, this.queuedSeq));
    this.socket = socket;
    let opened = false;
    this.handlers.onState(this.dropped ? "Reconnecting…" : "Connecting…", "wait");
    socket.addEventListener("open", () => {
      opened = true;
      if (this.dropped) {
        this.handlers.onState(
          `Reconnected: continuing after event ${this.queuedSeq}.`,
          "ok",
        );
      } else {
        this.handlers.onState("Live.", "ok");
      }
      this.retries = 0;
    });
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (typeof event.seq !== "number") {
        // a reply to a client message (an `error` without seq): not part of the log
        if (event.type === "error") this.handlers.onState(`Server: ${event.error}`, "error");
        return;
      }
      if (event.seq <= this.queuedSeq) return; // seen already
      this.queuedSeq = event.seq;
      this.queue.push(event);
      this.schedule();
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.closed) return;
      if (event.code === 1000) {
        this.handlers.onState("The task has ended: this is its whole history.", "done");
        this.afterQueue(() => this.handlers.onEnded());
        return;
      }
      this.dropped = true;
      // refused before it opened: perhaps the token expired (the REST check says so, and
      // sends the reader to the login page, instead of retrying forever)
      if (!opened && this.handlers.onRefused) this.handlers.onRefused();
      const delay = Math.min(500 * 2 ** this.retries, MAX_DELAY_MS);
      this.retries += 1;
      this.handlers.onState(
        `Connection lost (code ${event.code}); reconnecting in ${Math.ceil(delay / 1000)} s…`,
        "wait",
      );
      this.timer = setTimeout(() => {
        this.timer = 0;
        this.open();
      }, delay);
    });
  }

  /** Open again (after a resume), asking for what follows the last event seen. */
  reopen() {
    if (this.socket || this.closed) return;
    clearTimeout(this.timer);
    this.dropped = false;
    this.open();
  }

  /** Send a client message if connected; false otherwise. */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    cancelAnimationFrame(this.frame);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.drain());
  }

  drain() {
    this.frame = 0;
    const started = performance.now();
    let index = 0;
    while (index < this.queue.length && performance.now() - started < FRAME_BUDGET_MS) {
      const event = this.queue[index++];
      this.lastSeq = event.seq;
      this.handlers.onEvent(event);
    }
    this.queue.splice(0, index);
    this.handlers.onBatchEnd();
    if (this.queue.length) this.schedule();
    else if (this.whenDrained) {
      const callback = this.whenDrained;
      this.whenDrained = null;
      callback();
    }
  }

  afterQueue(callback) {
    if (!this.queue.length) callback();
    else this.whenDrained = callback;
  }
}
