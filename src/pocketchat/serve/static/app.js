// The chat page: conversations kept in localStorage, replies streamed from /chat/api/completions (SSE), where
// the server runs the model's tool calls (serve/tool_chat.py), a stop button that aborts the request (the
// server then cancels the generation), regenerate and edit. A reply is the turn's messages: the model's text,
// its tool calls (each drawn as a card with the tool's result) and its text after them; they are kept as
// they came, so a reload shows the same conversation and the next request sends back what the model saw.
// Model text reaches the page only through renderMarkdown (escapes everything) or textContent.
"use strict";

const KEYS = { conversations: "pocketchat.conversations", current: "pocketchat.current", settings: "pocketchat.settings" };
const SETTINGS = { model: "model", system: "system", temperature: "temperature", top_p: "top-p", max_tokens: "max-tokens",
                   use_tools: "use-tools" };
// While a reply streams it is redrawn whole, which costs time in its length: a redraw waits REDRAW_GAP times
// as long as the last one took, so redrawing takes at most a fifth of the time however long the reply gets
// (a short reply still redraws on every chunk).
const REDRAW_GAP = 4;

// [{id, title, messages: [{role, content, tool_calls?, tool_call_id?, stopped?}]}]
let conversations = load(KEYS.conversations, []);
let currentId = localStorage.getItem(KEYS.current);
let controller = null;  // the AbortController of the reply being streamed
let serverTools = [];  // the tools the server runs for this page (serve --tools)

function save() {
  localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
  localStorage.setItem(KEYS.current, currentId || "");
}

// a checkbox's setting is whether it is checked, every other one the field's text
const fieldValue = (el) => (el.type === "checkbox" ? el.checked : el.value);

function settings() {
  const s = {};
  for (const [name, id] of Object.entries(SETTINGS)) s[name] = fieldValue($(id));
  return s;
}

function saveSettings() {
  localStorage.setItem(KEYS.settings, JSON.stringify(settings()));
}

function current() {
  let conv = conversations.find((c) => c.id === currentId);
  if (!conv) {
    conv = { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8), title: "New chat", messages: [] };
    conversations.unshift(conv);
    currentId = conv.id;
  }
  return conv;
}

async function errorMessage(res) {
  try {
    return (await res.json()).error.message;
  } catch {
    return `HTTP ${res.status}`;
  }
}

// ---- rendering ---------------------------------------------------------------------------------------------

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function renderSidebar() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conv of conversations) {
    const li = document.createElement("li");
    li.className = conv.id === currentId ? "active" : "";
    const open = button(conv.title, () => { if (!controller) { currentId = conv.id; save(); render(); } });
    open.className = "open";
    const del = button("×", () => {
      if (controller) return;
      conversations = conversations.filter((c) => c !== conv);
      if (currentId === conv.id) currentId = conversations[0]?.id || null;
      save();
      render();
    });
    del.className = "delete";
    del.title = "delete this conversation";
    li.append(open, del);
    list.append(li);
  }
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// A tool call as a card: the tool's name, its arguments (each value as text) and its result, or what became
// of it. A result starting with "Error:" (a failure, or a refused call) marks the card.
function toolCard(call, result, finished) {
  const card = element("div", "tool-card");
  card.append(element("div", "tool-name", call ? call.function.name : "unreadable tool call"));
  if (call) {
    let args;
    try {
      args = JSON.parse(call.function.arguments);
    } catch {
      args = null;
    }
    const list = element("dl", "tool-args");
    for (const [name, value] of Object.entries(args && typeof args === "object" ? args : { arguments: call.function.arguments })) {
      list.append(element("dt", "", name), element("dd", "", typeof value === "string" ? value : JSON.stringify(value)));
    }
    card.append(list);
  }
  const text = result ? result.content : finished ? "(not run)" : "running…";
  card.append(element("pre", "tool-result", text));
  if (result?.content.startsWith("Error:")) card.classList.add("error");
  return card;
}

// The messages of one reply (assistant text, tool calls, tool results, in order) into `el`.
function drawReply(el, messages, finished) {
  const parts = [];
  const answered = new Set();
  messages.forEach((msg, i) => {
    if (msg.role === "assistant") {
      if (msg.content) {
        const text = element("div", "text");
        text.innerHTML = renderMarkdown(msg.content);  // escaped: see markdown.js
        parts.push(text);
      }
      for (const call of msg.tool_calls || []) {
        const result = messages.slice(i + 1).find((m) => m.role === "tool" && m.tool_call_id === call.id);
        if (result) answered.add(result);
        parts.push(toolCard(call, result, finished));
      }
    } else if (msg.role === "tool" && !answered.has(msg)) {
      parts.push(toolCard(null, msg, finished));  // the result of a call that didn't parse
    }
  });
  el.replaceChildren(...parts);
}

// One bubble: a user message, or a reply (the messages from `start` up to `end`, exclusive).
function renderBubble(conv, start, end) {
  const msg = conv.messages[start];
  const last = conv.messages[end - 1];
  const div = element("div", `message ${msg.role === "user" ? "user" : "assistant"}`);
  const content = element("div", "content");
  if (msg.role === "user") content.textContent = msg.content;
  else drawReply(content, conv.messages.slice(start, end), true);
  div.append(content);
  const actions = element("div", "actions");
  if (last.stopped) actions.append(element("span", "note", "(stopped)"));
  if (!controller && msg.role === "user") actions.append(button("Edit", () => editMessage(conv, start, div)));
  if (!controller && end === conv.messages.length) {
    // the last reply can be sampled again; a last question with no reply (it failed) can be retried
    if (msg.role === "user") actions.append(button("Retry", () => generate(conv)));
    else actions.append(button("Regenerate", () => regenerate(conv)));
  }
  div.append(actions);
  return div;
}

function render() {
  renderSidebar();
  const conv = conversations.find((c) => c.id === currentId);
  const bubbles = [];
  const messages = conv ? conv.messages : [];
  for (let start = 0, end; start < messages.length; start = end) {
    end = start + 1;  // a user message stands alone; a reply runs to the next user message
    if (messages[start].role !== "user") while (end < messages.length && messages[end].role !== "user") end++;
    bubbles.push(renderBubble(conv, start, end));
  }
  const box = $("messages");
  box.replaceChildren(...bubbles);
  box.scrollTop = box.scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("new-chat").disabled = busy;
}

// ---- talking to the server ---------------------------------------------------------------------------------

async function loadModels() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) return showError(`models: ${await errorMessage(res)}`);
  const select = $("model");
  const wanted = load(KEYS.settings, {}).model;
  select.replaceChildren();
  for (const m of (await res.json()).data) {
    const option = document.createElement("option");
    option.value = option.textContent = m.id;
    select.append(option);
  }
  if ([...select.options].some((o) => o.value === wanted)) select.value = wanted;
  showError("");
}

// The tools the server runs for this page; the checkbox turns them off for the page's requests.
async function loadTools() {
  const res = await fetch("/chat/api/tools", { headers: headers() });
  serverTools = res.ok ? (await res.json()).tools : [];
  $("tool-names").textContent = serverTools.length ? serverTools.join(", ") : "none on this server";
  $("use-tools").disabled = !serverTools.length;
}

// The labeling page exists when the server runs with --label FILE.
async function showLabelLink() {
  const res = await fetch("/label/api/status", { headers: headers() });
  $("label-link").hidden = !res.ok;
}

// Each SSE frame is "data: {json}" followed by a blank line; the stream ends with "data: [DONE]".
async function* sseFrames(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (frame.startsWith("data: ") && frame !== "data: [DONE]") yield JSON.parse(frame.slice(6));
    }
  }
}

// A function that shows the latest state of a streaming reply (`redraw` draws it), at the pace REDRAW_GAP
// allows; its flush() draws at once what is still waiting (the reply has finished), cancel() drops it
// (render() redraws).
function streamingView(redraw) {
  let due = 0, timer = null;
  const draw = () => {
    timer = null;
    const start = performance.now();
    redraw();
    const end = performance.now();
    due = end + (end - start) * REDRAW_GAP;
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  const show = () => {
    if (timer !== null) return;
    const wait = due - performance.now();
    if (wait <= 0) draw();
    else timer = setTimeout(draw, wait);
  };
  show.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  show.flush = () => {
    if (timer === null) return;
    show.cancel();
    draw();
  };
  return show;
}

// A stored message as the API takes it (the page's own marks, like `stopped`, stay here).
function apiMessage({ role, content, tool_calls, tool_call_id }) {
  const m = { role, content };
  if (tool_calls) m.tool_calls = tool_calls;
  if (tool_call_id) m.tool_call_id = tool_call_id;
  return m;
}

async function generate(conv) {
  const s = settings();
  const history = conv.messages.map(apiMessage);
  const messages = (s.system.trim() ? [{ role: "system", content: s.system }] : []).concat(history);
  const start = conv.messages.length;
  let current = { role: "assistant", content: "" };  // the message the deltas add to now
  conv.messages.push(current);
  controller = new AbortController();
  setBusy(true);
  showError("");
  render();
  const el = $("messages").lastElementChild;
  el.dataset.streaming = "true";
  const show = streamingView(() => drawReply(el.querySelector(".content"), conv.messages.slice(start), false));
  try {
    const body = { model: s.model, messages, stream: true, builtin_tools: s.use_tools ? serverTools : [] };
    // an empty field means the server's default (not 0)
    for (const name of ["temperature", "top_p", "max_tokens"]) {
      if (s[name].trim() !== "") body[name] = Number(s[name]);
    }
    const res = await fetch("/chat/api/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                       signal: controller.signal });
    if (!res.ok) throw new Error(await errorMessage(res));
    let started = false;
    for await (const chunk of sseFrames(res)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (!choice) continue;
      const delta = choice.delta;
      if (delta.role) {  // the next message of the turn (the first fills the reply already shown)
        if (started) conv.messages.push(current = { role: delta.role, content: "" });
        current.role = delta.role;
        if (delta.tool_call_id) current.tool_call_id = delta.tool_call_id;
        started = true;
      }
      if (delta.content) current.content += delta.content;
      if (delta.tool_calls) current.tool_calls = delta.tool_calls.map(({ index, ...call }) => call);
      show();
      if (choice.finish_reason) show.flush();
    }
  } catch (e) {
    if (e.name === "AbortError") current.stopped = true;
    else showError(e.message);
  } finally {
    show.cancel();
    // a reply that failed before its first word is dropped (Retry sends the question again)
    const reply = conv.messages.slice(start);
    if (!reply.some((m) => m.content || m.tool_calls || m.stopped)) conv.messages.splice(start);
    controller = null;
    setBusy(false);
    save();
    render();
  }
}

function send(text) {
  const conv = current();
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = text.slice(0, 40);
  save();
  return generate(conv);
}

function regenerate(conv) {
  while (conv.messages.length && conv.messages.at(-1).role !== "user") conv.messages.pop();  // the whole reply
  return generate(conv);
}

function editMessage(conv, index, div) {
  const area = document.createElement("textarea");
  area.className = "edit";
  area.value = conv.messages[index].content;
  const saveEdit = button("Save & submit", () => {
    if (!area.value.trim()) return;
    conv.messages = conv.messages.slice(0, index);
    if (index === 0) conv.title = "New chat";  // send() titles it after the edited question
    send(area.value);
  });
  div.replaceChildren(area, saveEdit, button("Cancel", render));
  area.focus();
}

// ---- wiring ------------------------------------------------------------------------------------------------

function init() {
  const saved = load(KEYS.settings, {});
  for (const [name, id] of Object.entries(SETTINGS)) {
    const el = $(id);
    if (saved[name] !== undefined && name !== "model") el[el.type === "checkbox" ? "checked" : "value"] = saved[name];
    el.addEventListener("change", saveSettings);
  }
  keepApiKey(KEYS.settings, () => {
    loadModels();
    loadTools();
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value;
    if (!text.trim() || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => controller?.abort());
  $("new-chat").addEventListener("click", () => {
    currentId = null;
    save();
    render();
    $("input").focus();
  });
  render();
  loadModels();
  loadTools();
  showLabelLink();
}

init();
