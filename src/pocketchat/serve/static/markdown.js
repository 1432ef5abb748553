// A small Markdown renderer for model output, safe by construction: every character of the input is
// HTML-escaped before any rule runs, and the rules only wrap that escaped text in a fixed set of tags.
// A link needs an http(s) URL, and the URL is escaped text inside a quoted attribute, so it can't close the
// attribute or smuggle a javascript: scheme. Model output therefore can't create an element, an attribute
// or a script of its own, whatever it contains.
"use strict";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Inline rules, on one escaped line: `code`, **bold**, *italic*, [text](http://url). Each pattern's repeated
// part stops at the character that could start its next match (a backtick, a star, a bracket), so a line is
// scanned in linear time whatever it holds (a link text that could hold "[" made 80,000 of them take seconds).
function renderInline(escaped) {
  const codes = [];  // set aside so the other rules leave code alone; NUL can't occur (stripped below)
  let s = escaped.replace(/`([^`]+)`/g, (_, code) => `\u0000${codes.push(code) - 1}\u0000`);
  s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^*\w])\*([^*\s][^*]*)\*(?![*\w])/g, "$1<em>$2</em>");
  s = s.replace(/\[([^[\]]+)\]\((https?:\/\/[^\s()]+)\)/g,
    '<a href="$2" target="_blank" rel="noopener noreferrer nofollow">$1</a>');
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[i]}</code>`);
}

function codeBlock(lang, lines) {
  const cls = lang ? ` class="language-${escapeHtml(lang)}"` : "";
  return `<pre><code${cls}>${escapeHtml(lines.join("\n"))}</code></pre>`;
}

// Block rules, line by line: ``` fences (an unclosed one, mid-stream, runs to the end), # headings,
// - / 1. lists, and paragraphs (blank-line separated, single newlines kept as <br>).
function renderMarkdown(text) {
  const html = [];
  let para = [], list = null, code = null;
  const inline = (line) => renderInline(escapeHtml(line));
  const flush = () => {
    if (para.length) html.push(`<p>${para.map(inline).join("<br>")}</p>`);
    if (list) html.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i)}</li>`).join("")}</${list.tag}>`);
    para = [];
    list = null;
  };
  for (const line of text.replace(/\u0000/g, "").split("\n")) {
    if (code) {
      if (/^\s*```\s*$/.test(line)) {
        html.push(codeBlock(code.lang, code.lines));
        code = null;
      } else {
        code.lines.push(line);
      }
      continue;
    }
    const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (fence) {
      flush();
      code = { lang: fence[1], lines: [] };
    } else if (heading) {
      flush();
      html.push(`<h${heading[1].length}>${inline(heading[2])}</h${heading[1].length}>`);
    } else if (item) {
      const tag = /\d/.test(item[1]) ? "ol" : "ul";
      if (para.length || (list && list.tag !== tag)) flush();
      list = list || { tag, items: [] };
      list.items.push(item[2]);
    } else if (!line.trim()) {
      flush();
    } else {
      if (list) flush();
      para.push(line);
    }
  }
  flush();
  if (code) html.push(codeBlock(code.lang, code.lines));
  return html.join("");
}
