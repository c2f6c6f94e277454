// The run dashboard's only script: keeps a run page live. No library, nothing fetched
// from elsewhere. The server renders everything; on each event of the run's stream
// (GET /runs/{id}/events, server-sent events) this swaps in the fresh #live fragment.
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const list = document.getElementById("events");
  const state = document.getElementById("stream-state");
  const tokens = new Map(); // step -> text streamed so far (kept across refreshes)
  let lastEvent = Date.now();
  let pending = null;
  let source = null;

  function say(text) { if (state) state.textContent = text; }

  function terminal() { return live.dataset.terminal === "true"; }

  function showTokens() {
    for (const box of live.querySelectorAll(".tokens[data-step]")) {
      const text = tokens.get(box.dataset.step);
      box.textContent = text || "";
      box.classList.toggle("filled", Boolean(text));
    }
  }

  async function refresh() {
    pending = null;
    let response;
    try {
      response = await fetch(live.dataset.fragment, {
        credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store",
      });
    } catch (err) {
      say("the server did not answer; retrying");
      return;
    }
    if (!response.ok) { say("refresh failed: HTTP " + response.status); return; }
    const html = await response.text();
    // Read what the reader has open (and whether they type) only now, just before the
    // swap: a click while the fragment was on its way is kept.
    const typing = document.activeElement && live.contains(document.activeElement) &&
      ["TEXTAREA", "INPUT"].includes(document.activeElement.tagName);
    if (typing) return; // never replace a form someone is filling in
    const open = new Set(Array.from(live.querySelectorAll("details[open]"), (d) => d.id));
    live.innerHTML = html;
    const status = response.headers.get("X-Run-Status");
    if (status) {
      live.dataset.status = status;
      live.dataset.terminal = String(["succeeded", "failed", "cancelled"].includes(status));
    }
    for (const id of open) {
      const el = document.getElementById(id);
      if (el) el.open = true;
    }
    showTokens();
  }

  function schedule() {
    if (!pending) pending = setTimeout(refresh, 200);
  }

  function note(event) {
    if (!list) return;
    const item = document.createElement("li");
    const parts = [event.type];
    if (event.step) parts.push(event.step);
    if (event.status) parts.push(event.status);
    if (event.attempt) parts.push("attempt " + event.attempt);
    item.textContent = (event.at ? event.at.slice(11, 23) + " " : "") + parts.join(" · ");
    item.className = "event type-" + event.type;
    list.prepend(item);
    while (list.children.length > 100) list.lastChild.remove();
  }

  function onEvent(message) {
    lastEvent = Date.now();
    let event;
    try { event = JSON.parse(message.data); } catch (err) { return; }
    if (event.type === "token") {
      tokens.set(event.step, (tokens.get(event.step) || "") + (event.text || ""));
      showTokens();
      return;
    }
    if (event.type === "tokens_superseded") tokens.delete(event.step);
    if (event.type === "partial_output" && event.step) {
      tokens.set(event.step, "partial output: " + JSON.stringify(event.value));
      showTokens();
    }
    note(event);
    if (event.type === "run_finished") {
      if (source) { source.close(); source = null; }
      say("run finished");
      refresh();
      return;
    }
    schedule();
  }

  function connect() {
    // A finished run's stream replays its events, then ends with run_finished.
    source = new EventSource(live.dataset.events);
    source.onopen = () => say("live");
    source.onmessage = onEvent;
    source.onerror = () => {
      // The server ends a finished run's stream: do not reconnect then.
      if (terminal() && source) { source.close(); source = null; say("run finished"); return; }
      if (source) say("reconnecting…");
    };
  }

  // A safety net: a stream that says nothing for a while does not leave the page stale.
  setInterval(() => {
    if (!terminal() && Date.now() - lastEvent > 3000) { lastEvent = Date.now(); refresh(); }
  }, 1000);
  connect();
})();
