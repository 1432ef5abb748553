// The chat page: conversations kept in localStorage, replies streamed from /v1/chat/completions (SSE),
// a stop button that aborts the request (the server then cancels the generation), regenerate and edit.
// Model text reaches the page only through renderMarkdown (escapes everything) or textContent.
"use strict";

const KEYS = { conversations: "pocketchat.conversations", current: "pocketchat.current", settings: "pocketchat.settings" };
const SETTINGS = { model: "model", system: "system", temperature: "temperature", top_p: "top-p", max_tokens: "max-tokens" };
// While a reply streams it is redrawn whole, which costs time in its length: a redraw waits REDRAW_GAP times
// as long as the last one took, so redrawing takes at most a fifth of the time however long the reply gets
// (a short reply still redraws on every chunk).
const REDRAW_GAP = 4;

let conversations = load(KEYS.conversations, []);  // [{id, title, messages: [{role, content, stopped?}]}]
let currentId = localStorage.getItem(KEYS.current);
let controller = null;  // the AbortController of the reply being streamed

function save() {
  localStorage.setItem(KEYS.conversations, JSON.stringify(conversations));
  localStorage.setItem(KEYS.current, currentId || "");
}

function settings() {
  const s = {};
  for (const [name, id] of Object.entries(SETTINGS)) s[name] = $(id).value;
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

function renderMessage(conv, index) {
  const msg = conv.messages[index];
  const div = document.createElement("div");
  div.className = `message ${msg.role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (msg.role === "assistant") content.innerHTML = renderMarkdown(msg.content);  // escaped: see markdown.js
  else content.textContent = msg.content;
  div.append(content);
  const actions = document.createElement("div");
  actions.className = "actions";
  if (msg.stopped) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = "(stopped)";
    actions.append(note);
  }
  if (!controller && msg.role === "user") actions.append(button("Edit", () => editMessage(conv, index, div)));
  if (!controller && index === conv.messages.length - 1) {
    // the last reply can be sampled again; a last question with no reply (it failed) can be retried
    if (msg.role === "assistant") actions.append(button("Regenerate", () => regenerate(conv)));
    else if (msg.role === "user") actions.append(button("Retry", () => generate(conv)));
  }
  div.append(actions);
  return div;
}

function render() {
  renderSidebar();
  const conv = conversations.find((c) => c.id === currentId);
  const box = $("messages");
  box.replaceChildren(...(conv ? conv.messages.map((_, i) => renderMessage(conv, i)) : []));
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

// A function that shows the latest text of a streaming reply in `el`, at the pace REDRAW_GAP allows; its
// flush() draws at once a text still waiting (the reply has finished), cancel() drops it (render() redraws).
function streamingView(el) {
  let text = "", due = 0, timer = null;
  const draw = () => {
    timer = null;
    const start = performance.now();
    el.innerHTML = renderMarkdown(text);  // escaped: see markdown.js
    const end = performance.now();
    due = end + (end - start) * REDRAW_GAP;
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  const show = (latest) => {
    text = latest;
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

async function generate(conv) {
  const s = settings();
  const history = conv.messages.map(({ role, content }) => ({ role, content }));
  const messages = (s.system.trim() ? [{ role: "system", content: s.system }] : []).concat(history);
  const reply = { role: "assistant", content: "" };
  conv.messages.push(reply);
  controller = new AbortController();
  setBusy(true);
  showError("");
  render();
  const el = $("messages").lastElementChild;
  el.dataset.streaming = "true";
  const show = streamingView(el.querySelector(".content"));
  try {
    const body = { model: s.model, messages, stream: true };
    // an empty field means the server's default (not 0)
    for (const name of ["temperature", "top_p", "max_tokens"]) {
      if (s[name].trim() !== "") body[name] = Number(s[name]);
    }
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                      signal: controller.signal });
    if (!res.ok) throw new Error(await errorMessage(res));
    for await (const chunk of sseFrames(res)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices[0]?.delta;
      if (delta?.content) {
        reply.content += delta.content;
        show(reply.content);
      }
      if (chunk.choices[0]?.finish_reason) show.flush();
    }
  } catch (e) {
    if (e.name === "AbortError") reply.stopped = true;
    else showError(e.message);
  } finally {
    show.cancel();
    // a reply that failed before its first word is dropped (Retry sends the question again)
    if (!reply.content && !reply.stopped) conv.messages.splice(conv.messages.indexOf(reply), 1);
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
  if (conv.messages.at(-1)?.role === "assistant") conv.messages.pop();
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
    if (saved[name] !== undefined && name !== "model") $(id).value = saved[name];
    $(id).addEventListener("change", saveSettings);
  }
  keepApiKey(KEYS.settings, loadModels);
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
  showLabelLink();
}

init();
