// The labeling page: draw a task-suite prompt (or type one), sample k replies from the server, rank them
// best first by clicking, save. The server keeps the sampled replies and writes every ranked pair to its
// comparison JSONL (serve/label_page.py). Model text reaches the page only through textContent.
"use strict";

const KEYS = { next: "pocketchat.label.next", settings: "pocketchat.label.settings" };
const SETTINGS = { k: "k", temperature: "temperature", max_tokens: "max-tokens" };

let taskIndex = null;  // the task-suite prompt in the box, until the person edits it
let set = null;  // the sampled set being ranked: {id, completions: [{index, text, finish_reason}]}
let ranking = [];  // indices of set.completions, best first

async function call(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  let data = null;
  try {
    data = await res.json();
  } catch {
    // not JSON: reported below by status
  }
  if (!res.ok) throw new Error(data?.error?.message || `HTTP ${res.status}`);
  return data;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

// ---- the prompt ------------------------------------------------------------------------------------------

async function refreshStatus() {
  try {
    const s = await call("GET", "/label/api/status");
    $("status").textContent = `${s.comparisons} comparisons in ${s.file}`;
  } catch (e) {
    showError(e.message);
  }
}

async function nextTaskPrompt() {
  const index = load(KEYS.next, 0);
  try {
    const p = await call("GET", `/label/api/prompt?index=${index}`);
    $("prompt").value = p.content;
    taskIndex = p.index;
    localStorage.setItem(KEYS.next, JSON.stringify(index + 1));
    $("prompt-source").textContent = `task ${p.task}, ${p.style} style (#${p.index})`;
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

function promptEdited() {
  taskIndex = null;
  $("prompt-source").textContent = "your own prompt";
}

// ---- sampling and ranking --------------------------------------------------------------------------------

function renderReplies() {
  const box = $("replies");
  box.replaceChildren();
  $("instructions").hidden = $("ranking-actions").hidden = !set;
  if (!set) return;
  for (const c of set.completions) {
    const div = document.createElement("div");
    const place = ranking.indexOf(c.index);
    div.className = place >= 0 ? "reply ranked" : "reply";
    div.dataset.index = c.index;
    const head = document.createElement("div");
    head.className = "head";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = place >= 0 ? `#${place + 1}` : "";
    const title = document.createElement("span");
    title.textContent = `Reply ${c.index + 1}`;
    head.append(rank, title);
    if (c.finish_reason !== "stop") {
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = c.finish_reason === "length" ? "(cut off at max tokens)" : `(${c.finish_reason})`;
      head.append(note);
    }
    if (place < 0) {
      const pick = document.createElement("button");
      pick.type = "button";
      pick.className = "pick";
      pick.textContent = `Pick as #${ranking.length + 1}`;
      pick.addEventListener("click", () => pickReply(c.index));
      head.append(pick);
    }
    const text = document.createElement("pre");
    text.className = "text";
    text.textContent = c.text;
    div.append(head, text);
    box.append(div);
  }
  $("save").disabled = ranking.length !== set.completions.length;
  $("undo").disabled = ranking.length === 0;
}

function pickReply(index) {
  ranking.push(index);
  const left = set.completions.filter((c) => !ranking.includes(c.index));
  if (left.length === 1) ranking.push(left[0].index);  // the last one ranks itself
  renderReplies();
}

function undo() {
  // a rank given by itself (the last) goes with the one that caused it
  ranking = ranking.length === set.completions.length ? ranking.slice(0, -2) : ranking.slice(0, -1);
  renderReplies();
}

async function sample() {
  const prompt = $("prompt").value;
  if (taskIndex === null && !prompt.trim()) return showError("type a prompt, or draw a task prompt");
  const body = { k: number("k"), temperature: number("temperature"), max_tokens: number("max-tokens") };
  if (taskIndex !== null) body.task_index = taskIndex;
  else body.prompt = prompt;
  $("sample").disabled = true;
  $("saved").textContent = "";
  showError("");
  try {
    set = await call("POST", "/label/api/samples", body);
    ranking = [];
  } catch (e) {
    showError(e.message);
  } finally {
    $("sample").disabled = false;
    renderReplies();
  }
}

async function save() {
  $("save").disabled = true;
  try {
    const r = await call("POST", "/label/api/rank", { id: set.id, ranking });
    let message = `saved ${r.pairs} comparisons`;
    if (r.ties) message += ` (${r.ties} pairs of identical replies left out)`;
    if (r.refused.length) message += `; ${r.refused.length} pairs refused: ${r.refused[0]}`;
    $("saved").textContent = message;
    $("status").textContent = `${r.comparisons} comparisons in ${r.file}`;
    const fromTasks = taskIndex !== null;
    set = null;
    ranking = [];
    renderReplies();
    if (fromTasks) await nextTaskPrompt();
  } catch (e) {
    showError(e.message);
    $("save").disabled = false;
  }
}

function skip() {
  set = null;
  ranking = [];
  renderReplies();
  if (taskIndex !== null) nextTaskPrompt();
}

// ---- wiring ------------------------------------------------------------------------------------------------

function init() {
  keepApiKey(KEYS.settings, refreshStatus);
  const saved = load(KEYS.settings, {});
  for (const [name, id] of Object.entries(SETTINGS)) {
    if (saved[name] !== undefined) $(id).value = saved[name];
    $(id).addEventListener("change", () => {
      const s = {};
      for (const [n, i] of Object.entries(SETTINGS)) s[n] = $(i).value;
      localStorage.setItem(KEYS.settings, JSON.stringify(s));
    });
  }
  $("prompt").addEventListener("input", promptEdited);
  $("task-prompt").addEventListener("click", nextTaskPrompt);
  $("sample").addEventListener("click", sample);
  $("undo").addEventListener("click", undo);
  $("save").addEventListener("click", save);
  $("skip").addEventListener("click", skip);
  renderReplies();
  refreshStatus();
}

init();
