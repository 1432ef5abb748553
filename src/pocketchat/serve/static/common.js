// What both pages (the chat page and the labeling page) use: element lookup, saved settings, the API key
// (field, storage, header) and the error line. Loaded before each page's own script.
"use strict";

const $ = (id) => document.getElementById(id);

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// The API key lives in this tab's sessionStorage, shared by both pages: never written to disk, gone when the
// tab closes (localStorage would keep it in plain text in the browser profile).
const API_KEY = "pocketchat.api_key";

function keepApiKey(settingsKey, onChange) {
  const saved = load(settingsKey, {});
  if ("api_key" in saved) {  // an earlier version saved it with the page's settings: forget it there
    delete saved.api_key;
    localStorage.setItem(settingsKey, JSON.stringify(saved));
  }
  const input = $("api-key");
  input.value = sessionStorage.getItem(API_KEY) || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem(API_KEY, input.value);
    onChange();
  });
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}
