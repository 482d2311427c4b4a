// Digitorn browser chat: a thin client of the REST API and the persistent SSE stream.
// Every piece of data from the server is written with textContent (never innerHTML), and the
// page runs under a CSP that allows only this script.
"use strict";

(function () {
  const KEY_STORAGE = "digitorn.apiKey";
  const SESSION_STORAGE = "digitorn.session.";
  const EVENT_TYPES = [
    "connected", "message_queued", "tool_start", "tool_call", "result", "token", "error", "hook",
    "approval_request", "approval_resolved", "notification", "notification_result", "hook_notification",
  ];

  const $ = (id) => document.getElementById(id);
  const apiBase = document.body.dataset.apiBase || "/api/apps/";
  const ui = {
    status: $("status"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyForget: $("key-forget"),
    sessionForm: $("session-form"),
    appSelect: $("app-select"),
    appsRefresh: $("apps-refresh"),
    sessionInput: $("session-id"),
    sessionNew: $("session-new"),
    log: $("log"),
    messageForm: $("message-form"),
    message: $("message"),
    send: $("send"),
  };

  const state = {
    key: "",
    app: "",
    session: "",
    source: null, // the EventSource of the open session
    live: false,
    replayAfterSend: false, // the stream could not open before the session existed
    streaming: new Map(), // correlation_id -> entry receiving token events
    approvals: new Map(), // request_id -> approval entry
  };

  // --- small helpers ------------------------------------------------------------------------

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.className = "status" + (kind ? " " + kind : "");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pretty(value) {
    if (typeof value === "string") return value;
    try {
      return JSON.stringify(value, null, 2);
    } catch (err) {
      return String(value);
    }
  }

  function addEntry(type, label, body) {
    const entry = el("div", "entry entry-" + type);
    entry.dataset.type = type;
    entry.appendChild(el("div", "label", label));
    if (body !== undefined && body !== null && body !== "") entry.appendChild(el("div", "body", body));
    ui.log.appendChild(entry);
    ui.log.scrollTop = ui.log.scrollHeight;
    return entry;
  }

  function addBlock(entry, value) {
    entry.appendChild(el("pre", "data", pretty(value)));
  }

  function randomSessionId() {
    const bytes = new Uint8Array(6);
    crypto.getRandomValues(bytes);
    return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function appPath(...parts) {
    return apiBase + parts.map(encodeURIComponent).join("/");
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + state.key, Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new Error("The daemon did not answer (" + err.message + ").");
    }
    let envelope = null;
    try {
      envelope = await response.json();
    } catch (err) {
      throw new Error("Unexpected answer from the daemon (HTTP " + response.status + ").");
    }
    if (!response.ok || !envelope || envelope.success === false) {
      const error = new Error((envelope && envelope.error) || "HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return envelope.data;
  }

  function setComposer(enabled) {
    ui.message.disabled = !enabled;
    ui.send.disabled = !enabled;
  }

  // --- key and apps ---------------------------------------------------------------------------

  async function useKey(key) {
    state.key = key.trim();
    if (!state.key) {
      setStatus("Enter an API key to start.");
      return;
    }
    localStorage.setItem(KEY_STORAGE, state.key);
    await loadApps();
  }

  let appsGeneration = 0;

  async function loadApps() {
    // A slower answer for a key that was replaced meanwhile must not overwrite the newer one.
    const generation = ++appsGeneration;
    setStatus("Loading apps…");
    let data;
    try {
      data = await api("GET", apiBase);
    } catch (err) {
      if (generation !== appsGeneration) return;
      setStatus(err.status === 401 ? "That API key was refused: " + err.message : err.message, "error");
      return;
    }
    if (generation !== appsGeneration) return;
    const apps = Array.isArray(data) ? data : (data && (data.apps || data.results)) || [];
    const previous = ui.appSelect.value || state.app;
    ui.appSelect.replaceChildren();
    for (const app of apps) {
      const option = el("option", null, app.name && app.name !== app.app_id ? app.app_id + " — " + app.name : app.app_id);
      option.value = app.app_id;
      ui.appSelect.appendChild(option);
    }
    if (!apps.length) {
      setStatus("No app is deployed. Deploy one with `digitorn deploy PATH`.", "error");
      return;
    }
    if (previous && apps.some((a) => a.app_id === previous)) ui.appSelect.value = previous;
    selectApp(ui.appSelect.value);
    setStatus(apps.length + " app" + (apps.length === 1 ? "" : "s") + " available. Pick one and open a session.");
  }

  function selectApp(appId) {
    state.app = appId;
    ui.sessionInput.value = localStorage.getItem(SESSION_STORAGE + appId) || randomSessionId();
  }

  // --- session: history, then the live stream -------------------------------------------------

  function closeStream() {
    if (state.source) state.source.close();
    state.source = null;
    state.live = false;
  }

  async function openSession() {
    const sessionId = ui.sessionInput.value.trim();
    if (!state.key) return setStatus("Enter an API key first.", "error");
    if (!state.app) return setStatus("Pick an app first.", "error");
    if (!/^[A-Za-z0-9_.:\-]{1,200}$/.test(sessionId)) {
      return setStatus("Session ids use letters, digits, '_', '.', ':' and '-' (at most 200).", "error");
    }
    closeStream();
    state.session = sessionId;
    state.streaming.clear();
    state.approvals.clear();
    state.replayAfterSend = false;
    localStorage.setItem(SESSION_STORAGE + state.app, sessionId);
    ui.log.replaceChildren();
    setComposer(false);

    let isNew = false;
    try {
      const history = await api("GET", appPath(state.app, "sessions", sessionId, "history"));
      renderHistory((history && history.messages) || []);
    } catch (err) {
      if (err.status !== 404) return setStatus(err.message, "error");
      isNew = true;
      addEntry("note", "New session " + sessionId + ": say something to start.");
    }
    connect(null, isNew);
  }

  function renderHistory(messages) {
    for (const message of messages) {
      if (message.role === "user") addEntry("user", "you", message.content);
      else if (message.role === "assistant") {
        if (message.content) addEntry("assistant", "assistant", message.content);
        // The history folds each tool result into its call (tool_calls[{id, name, params, result, status}]).
        for (const call of message.tool_calls || []) {
          const entry = addEntry("tool_call", "tool call: " + call.name);
          addBlock(entry, call.params || {});
          if (call.status === "done") {
            const result = addEntry("result", "result of " + call.name);
            addBlock(result, call.result);
          }
        }
      }
    }
  }

  function connect(since, isNew) {
    closeStream();
    let url = appPath(state.app, "sessions", state.session, "events") + "?token=" + encodeURIComponent(state.key);
    if (since !== null && since !== undefined) url += "&since=" + encodeURIComponent(since);
    const source = new EventSource(url);
    state.source = source;
    setStatus("Connecting to " + state.app + "/" + state.session + "…");
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        if (source !== state.source) return;
        let data = {};
        try {
          data = JSON.parse(event.data);
        } catch (err) {
          data = { raw: event.data };
        }
        handleEvent(type, data);
      });
    }
    source.onopen = () => {
      if (source !== state.source) return;
      markLive();
    };
    source.onerror = () => {
      if (source !== state.source) return;
      if (source.readyState === EventSource.CLOSED) {
        state.live = false;
        if (isNew) {
          // The stream may refuse a session that does not exist yet: the first message creates
          // it, and the stream then replays from the start so nothing of that turn is missed.
          state.replayAfterSend = true;
          setComposer(true);
          setStatus("New session: the live stream opens with your first message.");
        } else {
          setStatus("The event stream was refused (check the key's scopes); reopen the session to retry.", "error");
        }
      } else {
        setStatus("Stream interrupted; reconnecting…", "error");
      }
    };
  }

  function markLive() {
    state.live = true;
    setComposer(true);
    setStatus("Live: " + state.app + "/" + state.session, "live");
  }

  // --- events ---------------------------------------------------------------------------------

  function handleEvent(type, data) {
    switch (type) {
      case "connected":
        markLive();
        break;
      case "message_queued":
        if (data.position > 0) addEntry("note", "Queued behind " + data.position + " message(s).");
        break;
      // A tool's start and finish (entry classes tool_call / result), then the turn's `result`
      // (the answer, entry class done).
      case "tool_start": {
        const entry = addEntry("tool_call", "tool call: " + data.name);
        addBlock(entry, data.params || {});
        break;
      }
      case "tool_call": {
        const ok = data.success !== false;
        const entry = addEntry("result", (ok ? "result of " : "failed: ") + (data.name || "tool"));
        if (!ok) entry.classList.add("failed");
        addBlock(entry, ok ? data.result : data.error || data.result);
        break;
      }
      case "token": {
        let entry = state.streaming.get(data.correlation_id);
        if (!entry) {
          entry = addEntry("token", "assistant (typing)", "");
          entry.appendChild(el("div", "body", ""));
          state.streaming.set(data.correlation_id, entry);
        }
        entry.querySelector(".body").textContent += data.delta || "";
        break;
      }
      case "error":
        addEntry("error", "error" + (data.code ? " (" + data.code + ")" : ""), data.error || pretty(data));
        break;
      case "hook":
        addEntry("note", "hook: " + (data.hook_id || "runtime"));
        break;
      case "hook_notification":  // a manifest hook's `notify` action
        addEntry("notification", data.title || "notice", data.message || "");
        break;
      case "approval_request":
        renderApproval(data);
        break;
      case "approval_resolved":
        resolveApproval(data.request_id, data.approved, data.status, data.message);
        break;
      case "notification": {
        const entry = addEntry("notification", "background task " + (data.task_id || "") + ": " + (data.status || ""));
        addBlock(entry, data.error || data.result_preview || {});
        break;
      }
      case "notification_result":
        addEntry("notification_result", "after notifications", data.content);
        break;
      case "result": {
        const streaming = state.streaming.get(data.correlation_id);
        if (streaming) {
          streaming.remove();
          state.streaming.delete(data.correlation_id);
        }
        let label = "assistant";
        if (data.truncated) label += " (truncated)";
        if (data.cancelled) label += " (cancelled)";
        addEntry("done", label, data.content);
        break;
      }
      default:
        break;
    }
  }

  function renderApproval(data) {
    // The original's names (tool_name, tool_params, description) first, this daemon's earlier ones after.
    const tool = data.tool_name || data.name;
    const about = data.description || data.reason;
    const entry = addEntry("approval_request", "approval needed: " + tool + " (risk " + (data.risk_level || "?") + ")");
    entry.dataset.requestId = data.request_id;
    if (about) entry.appendChild(el("div", "body", about));
    addBlock(entry, data.tool_params || data.params || {});
    const actions = el("div", "actions");
    const approve = el("button", "approve", "Approve");
    const deny = el("button", "deny", "Deny");
    approve.type = "button";
    deny.type = "button";
    approve.addEventListener("click", () => decide(data.request_id, true));
    deny.addEventListener("click", () => decide(data.request_id, false));
    actions.append(approve, deny);
    entry.appendChild(actions);
    state.approvals.set(data.request_id, entry);
  }

  function resolveApproval(requestId, approved, status, message) {
    const entry = state.approvals.get(requestId);
    if (!entry) {
      addEntry("note", "approval " + requestId + ": " + (status || (approved ? "approved" : "denied")));
      return;
    }
    for (const button of entry.querySelectorAll("button")) button.disabled = true;
    let decision = entry.querySelector(".decision");
    if (!decision) {
      decision = el("div", "decision");
      entry.appendChild(decision);
    }
    const word = status || (approved ? "approved" : "denied");
    decision.className = "decision " + (approved ? "approved" : "denied");
    decision.textContent = word + (message ? ": " + message : "");
  }

  async function decide(requestId, approved) {
    const entry = state.approvals.get(requestId);
    if (entry) for (const button of entry.querySelectorAll("button")) button.disabled = true;
    try {
      const data = await api("POST", appPath(state.app, "approve"), { request_id: requestId, approved, message: "" });
      resolveApproval(requestId, approved, data && data.status, "");
    } catch (err) {
      if (entry) for (const button of entry.querySelectorAll("button")) button.disabled = false;
      addEntry("error", "approval not recorded", err.message);
    }
  }

  // --- sending --------------------------------------------------------------------------------

  async function sendMessage() {
    const text = ui.message.value;
    if (!text.trim() || !state.session) return;
    setComposer(false);
    // Shown before the POST returns: the turn's first events can arrive before its 202 does.
    const entry = addEntry("user", "you", text);
    try {
      await api("POST", appPath(state.app, "sessions", state.session, "messages"), { message: text });
      ui.message.value = "";
      if (state.replayAfterSend) {
        state.replayAfterSend = false;
        connect(0, false);
      }
    } catch (err) {
      entry.remove();
      addEntry("error", "message not sent", err.message);
    } finally {
      if (state.live || state.replayAfterSend || state.source) setComposer(true);
      ui.message.focus();
    }
  }

  // --- wiring ---------------------------------------------------------------------------------

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useKey(ui.keyInput.value);
  });
  ui.keyForget.addEventListener("click", () => {
    appsGeneration++;
    localStorage.removeItem(KEY_STORAGE);
    closeStream();
    state.key = "";
    ui.keyInput.value = "";
    ui.appSelect.replaceChildren();
    setComposer(false);
    setStatus("Key forgotten. Enter an API key to start.");
  });
  ui.appsRefresh.addEventListener("click", () => loadApps());
  ui.appSelect.addEventListener("change", () => selectApp(ui.appSelect.value));
  ui.sessionNew.addEventListener("click", () => {
    ui.sessionInput.value = randomSessionId();
    openSession();
  });
  ui.sessionForm.addEventListener("submit", (event) => {
    event.preventDefault();
    openSession();
  });
  ui.messageForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      sendMessage();
    }
  });

  const saved = localStorage.getItem(KEY_STORAGE);
  if (saved) {
    ui.keyInput.value = saved;
    useKey(saved);
  }
})();
