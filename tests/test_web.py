"""The web pages in a real browser: headless Chromium (Debian's `chromium`, driven by playwright without
`playwright install`) against a real uvicorn server, as a person uses them.

The chat page (/) runs on the scripted model of test_serve.py, whose reply holds HTML that must stay text
(`<img onerror=...>`, `<SCRIPT>`) and Markdown that must render (**bold**), and, for the tools the server
runs, on test_tool_chat.py's script, which calls the calculator and Python; the labeling page (/label) runs
on the random model, whose samples differ from each other. One browser serves the whole module; every test
gets a fresh context (empty localStorage) and fails on any page error or console error (a CSP violation
included). Without /usr/bin/chromium the browser tests skip (`apt-get install -y chromium`), except under
CI (the CI variable set), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import itertools
import json
import os
from types import SimpleNamespace

import httpx
import pytest

from pocketchat.cli import main
from pocketchat.data.comparisons import load_comparisons
from pocketchat.errors import UserError
from pocketchat.labeler import comparison_record
from pocketchat.serve.app import create_app
from pocketchat.tasks import mixture, prompt_messages
from pocketchat.terminal_chat import completion_messages
from test_serve import REPLY, random_engine, running, scripted_engine, wait_for
from test_tool_chat import GREETING, PYTHON_CODE, script_engine

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 15_000
LABEL_TASKS = ["add2", "sort_list"]


# ---- servers and the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_site():
    """(engine, base URL, app) of the scripted model's server."""
    engine = scripted_engine()
    app = create_app(engine, "scripted")
    with running(app) as url:
        yield engine, url, app


@pytest.fixture(scope="module")
def tool_site():
    """(base URL, app) of the tool-calling script's server, with the default tools (the calculator)."""
    app = create_app(script_engine(), "script")
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def label_site(tmp_path_factory):
    """(base URL, the comparison file) of a labeling server over the random model."""
    out = tmp_path_factory.mktemp("label") / "comparisons.jsonl"
    app = create_app(random_engine(), "rnd", label=out, label_tasks=LABEL_TASKS)
    with running(app) as url:
        yield url, out


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def new_page(browser):
    """Open a page in a fresh browser context; on teardown, fail on any error the pages reported."""
    contexts, errors = [], []

    def open_page(url: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        # (a 4xx answer is logged as "Failed to load resource"; what the page makes of it is tested)
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and errors.append(f"console: {m.text}"))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert not errors, errors


def chat_bodies(page) -> list[dict]:
    """The JSON bodies of the page's chat requests, as they are sent."""
    bodies = []
    page.on("request", lambda r: r.url.endswith("/chat/api/completions") and bodies.append(r.post_data_json))
    return bodies


def open_chat(new_page, url: str, max_tokens: int | None = None):
    page = new_page(url)
    page.wait_for_function("() => document.getElementById('model').options.length > 0")
    if max_tokens is not None:
        page.fill("#max-tokens", str(max_tokens))
    return page


def send(page, text: str) -> None:
    """Type a message, press Enter, wait for the reply to finish."""
    before = page.locator(".message.assistant").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(f"() => document.querySelectorAll('.message.assistant').length > {before} "
                           "&& document.getElementById('stop').hidden")


def texts(page, selector: str) -> list[str]:
    return page.locator(selector).all_text_contents()


def reply_tokens(engine) -> int:
    return len(engine.tokenizer.encode(REPLY))


# ---- the chat page -------------------------------------------------------------------------------------------

@pytest.mark.slow  # Chromium
def test_page_is_served_with_its_csp_and_lists_the_models(new_page, chat_site):
    _, url, _ = chat_site
    csp = httpx.get(url).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = open_chat(new_page, url)
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [o for o in page.locator("#model option").all_text_contents()] == [m["id"] for m in models] == ["scripted"]
    assert page.locator("#label-link").is_hidden()  # this server has no labeling page


@pytest.mark.slow  # Chromium
def test_chat_page_links_to_the_labeling_page_when_there_is_one(new_page, label_site):
    url, _ = label_site
    page = open_chat(new_page, url)
    page.wait_for_selector("#label-link", state="visible")
    page.click("#label-link")
    page.wait_for_url(f"{url}/label")


@pytest.mark.slow  # Chromium
def test_reply_streams_in_and_renders_markdown_but_no_markup_from_the_model(new_page, chat_site):
    engine, url, _ = chat_site
    page = open_chat(new_page, url, max_tokens=reply_tokens(engine) + 20)
    # every length the reply's text had on screen while it streamed
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const el = document.querySelector('[data-streaming] .content');
            if (el) window.lengths.push(el.textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")
    send(page, "say <b>it</b>")
    shown = texts(page, ".message.assistant .content")[0]
    assert shown == REPLY.replace("**bold**", "bold") + " la" * 20
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) >= 3 and max(lengths) == len(shown), lengths  # it grew piece by piece
    # the model's HTML is text: no element, no handler, no script ran; its Markdown is rendered
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("img").count() == 0 and page.locator("#messages script").count() == 0
    assert texts(page, ".message.assistant strong") == ["bold"]
    # and so is the person's own message
    assert texts(page, ".message.user .content") == ["say <b>it</b>"] and page.locator(".message.user b").count() == 0


@pytest.mark.slow  # Chromium
def test_stop_cancels_the_generation_on_the_server(new_page, chat_site):
    _, url, app = chat_site
    stats = app.state.batcher.stats
    wait_for(lambda: stats.running == 0)
    cancelled, generated = stats.cancelled, stats.generated_tokens
    page = open_chat(new_page, url, max_tokens=2000)  # this model never stops by itself
    page.fill("#input", "go on forever")
    page.press("#input", "Enter")
    page.wait_for_function("() => (document.querySelector('[data-streaming] .content')?.textContent || '').includes('la')")
    page.click("#stop")
    wait_for(lambda: stats.cancelled == cancelled + 1 and stats.running == 0)
    assert stats.generated_tokens - generated < 2000
    page.wait_for_selector("#stop", state="hidden")
    assert texts(page, ".message.assistant .note") == ["(stopped)"]
    assert texts(page, ".message.assistant .content")[0].startswith("Hi <img")
    stored = page.evaluate("JSON.parse(localStorage.getItem('pocketchat.conversations'))")
    assert stored[0]["messages"][-1]["stopped"] is True
    assert page.locator("#send").is_enabled()


@pytest.mark.slow  # Chromium
def test_regenerate_and_edit_resend_the_right_history(new_page, chat_site):
    engine, url, _ = chat_site
    page = open_chat(new_page, url, max_tokens=reply_tokens(engine))
    bodies = chat_bodies(page)
    send(page, "first question")
    send(page, "second question")
    reply = REPLY.replace("**bold**", "bold")
    assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
    assert bodies[-1]["messages"][1]["content"] == REPLY  # the history holds what the model said, not the HTML
    # regenerate: the last reply is sampled again from the same history
    page.click(".message.assistant >> nth=-1 >> text=Regenerate")
    page.wait_for_function("() => document.getElementById('stop').hidden && document.querySelectorAll('.message').length === 4")
    assert len(bodies) == 3 and bodies[2]["messages"] == bodies[1]["messages"]
    # edit the first question: everything after it goes, the edited question is sent
    page.click(".message.user >> nth=0 >> text=Edit")
    page.fill("textarea.edit", "edited question")
    page.click("text=Save & submit")
    page.wait_for_function("() => document.getElementById('stop').hidden && document.querySelectorAll('.message').length === 2")
    assert [m["content"] for m in bodies[3]["messages"]] == ["edited question"]
    assert texts(page, ".message .content") == ["edited question", reply]
    assert texts(page, "#conversations .open") == ["edited question"]


@pytest.mark.slow  # Chromium
def test_conversations_persist_across_a_reload(new_page, chat_site):
    engine, url, _ = chat_site
    page = open_chat(new_page, url, max_tokens=reply_tokens(engine))
    send(page, "remember me")
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    send(page, "and me")
    page.reload()
    page.wait_for_selector(".message.assistant")
    assert texts(page, "#conversations .open") == ["and me", "remember me"]
    assert texts(page, ".message.user .content") == ["and me"]  # the conversation that was open
    page.click("#conversations .open >> text=remember me")
    assert texts(page, ".message.user .content") == ["remember me"]
    assert texts(page, ".message.assistant strong") == ["bold"]
    assert page.locator("#max-tokens").input_value() == str(reply_tokens(engine))  # settings persist too


@pytest.mark.slow  # Chromium
def test_settings_reach_the_request(new_page, chat_site):
    engine, url, _ = chat_site
    page = open_chat(new_page, url)
    bodies = chat_bodies(page)
    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0.3")
    page.fill("#top-p", "0.9")
    page.fill("#max-tokens", "5")
    page.select_option("#model", "scripted")
    page.wait_for_function("() => document.getElementById('tool-names').textContent === 'calculator'")
    send(page, "hello")
    assert bodies[0] == {"model": "scripted", "stream": True, "temperature": 0.3, "top_p": 0.9, "max_tokens": 5,
                         "builtin_tools": ["calculator"],
                         "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}]}
    # an emptied field means the server's default, not 0; the tools box off runs none
    page.fill("#system", "")
    page.fill("#temperature", "")
    page.fill("#top-p", "")
    page.uncheck("#use-tools")
    send(page, "again")
    assert bodies[1]["max_tokens"] == 5 and "temperature" not in bodies[1] and "top_p" not in bodies[1]
    assert bodies[1]["messages"][0]["role"] == "user" and bodies[1]["builtin_tools"] == []
    page.reload()
    assert not page.is_checked("#use-tools")  # kept with the other settings


@pytest.mark.slow  # Chromium
def test_the_api_key_is_kept_for_this_tab_only(new_page, tmp_path):
    """The key goes to sessionStorage (both pages read it there), never to localStorage, and a key an earlier
    version left in localStorage is removed."""
    app = create_app(scripted_engine(), "scripted", api_key="sekrit", label=tmp_path / "c.jsonl")
    with running(app) as url:
        page = new_page(url)
        page.wait_for_selector("#error:not([hidden])")  # no key yet: the models can't be listed
        page.evaluate("localStorage.setItem('pocketchat.settings', JSON.stringify({api_key: 'old', temperature: '0.5'}))")
        page.reload()
        page.fill("#api-key", "sekrit")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("() => document.getElementById('model').options.length > 0")
        assert page.evaluate("sessionStorage.getItem('pocketchat.api_key')") == "sekrit"
        assert page.evaluate("JSON.parse(localStorage.getItem('pocketchat.settings'))") == {"temperature": "0.5"}
        page.goto(f"{url}/label")  # the same tab: the labeling page has the key too
        page.wait_for_function("() => document.getElementById('status').textContent.includes('comparisons')")
        assert page.input_value("#api-key") == "sekrit"
        assert "sekrit" not in page.evaluate("JSON.stringify(localStorage)")


@pytest.mark.slow  # Chromium
def test_markdown_renders_long_runs_of_markup_in_linear_time(new_page, chat_site):
    _, url, _ = chat_site
    page = open_chat(new_page, url)
    # each was slow for a pattern that backtracks over the rest of the line (80,000 "[" took seconds)
    ms = page.evaluate("""() => ["[".repeat(80000), "[a".repeat(40000), "[a](".repeat(20000), "**a".repeat(27000),
                                 "*a".repeat(40000), "`a".repeat(40000), "```" + " ".repeat(80000) + "x"]
        .map((text) => { const start = performance.now(); renderMarkdown(text); return performance.now() - start; })""")
    assert max(ms) < 250, ms


@pytest.mark.slow  # Chromium
def test_a_server_error_is_shown_and_the_question_can_be_retried(new_page, chat_site):
    engine, url, _ = chat_site
    page = open_chat(new_page, url)
    page.fill("#temperature", "5")  # out of range: the server answers 400
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "temperature" in page.text_content("#error")
    assert page.locator(".message.assistant").count() == 0  # no empty reply is left behind
    page.fill("#temperature", "1")
    page.fill("#max-tokens", str(reply_tokens(engine)))
    page.click(".message.user >> text=Retry")
    page.wait_for_function("() => document.querySelectorAll('.message.assistant').length === 1 "
                           "&& document.getElementById('stop').hidden")
    assert page.locator("#error").is_hidden()
    assert texts(page, ".message.assistant strong") == ["bold"]


# ---- the tools the server runs ----------------------------------------------------------------------------------

NO_MARKUP = ("tool_call", "<|im_", "im_end", "im_start")


def cards(page) -> list[tuple[str, list[str], str]]:
    """(tool name, argument values, result) of each tool card on the page."""
    return [(card.locator(".tool-name").text_content(), card.locator(".tool-args dd").all_text_contents(),
             card.locator(".tool-result").text_content()) for card in page.locator(".tool-card").all()]


@pytest.mark.slow  # Chromium
def test_a_calculator_call_shows_as_a_card_with_its_result_then_the_answer(new_page, tool_site):
    url, _ = tool_site
    page = open_chat(new_page, url)
    bodies = chat_bodies(page)
    page.wait_for_function("() => document.getElementById('tool-names').textContent === 'calculator'")
    send(page, "What is 37 + 45?")
    # one reply: the call, its result, the answer; no markup anywhere on the page
    assert page.locator(".message.assistant").count() == 1
    assert cards(page) == [("calculator", ["37 + 45"], "82")]
    assert texts(page, ".message.assistant .text") == ["So the answer is 82."]
    assert page.locator(".tool-card.error").count() == 0
    assert not any(tag in page.inner_text("body") for tag in NO_MARKUP)
    # the history keeps the tool turns: a reload shows the same reply, and the next question sends them back
    page.reload()
    page.wait_for_selector(".tool-card")
    assert cards(page) == [("calculator", ["37 + 45"], "82")]
    assert texts(page, ".message.assistant .text") == ["So the answer is 82."]
    page.wait_for_function("() => document.getElementById('model').options.length > 0")
    send(page, "hi")
    history = bodies[-1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]
    (call,) = history[1]["tool_calls"]
    assert call["function"]["name"] == "calculator" and history[2] == {"role": "tool", "content": "82",
                                                                        "tool_call_id": call["id"]}
    assert texts(page, ".message.assistant .text")[-1] == GREETING  # its <b> stays text
    assert page.locator(".message.assistant b").count() == 0
    # regenerate samples the whole tool turn again; edit replaces it
    page.click(".message.user >> nth=0 >> text=Edit")
    page.fill("textarea.edit", "What is 2 + 3?")
    page.click("text=Save & submit")
    page.wait_for_function("() => document.getElementById('stop').hidden && document.querySelectorAll('.message').length === 2")
    assert cards(page) == [("calculator", ["2 + 3"], "5")]
    page.click(".message.assistant >> text=Regenerate")
    page.wait_for_function("() => document.getElementById('stop').hidden && document.querySelectorAll('.message').length === 2")
    assert bodies[-1]["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert cards(page) == [("calculator", ["2 + 3"], "5")]
    assert texts(page, ".message.assistant .text") == ["So the answer is 5."]
    stored = page.evaluate("JSON.parse(localStorage.getItem('pocketchat.conversations'))")[0]["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.slow  # Chromium
def test_a_python_call_is_refused_with_a_clear_card_when_the_server_does_not_run_python(new_page, tool_site):
    url, _ = tool_site
    page = open_chat(new_page, url)
    send(page, "Use python, please")
    ((name, args, result),) = cards(page)
    assert (name, args) == ("python", [PYTHON_CODE])
    assert result == "Error: the 'python' tool is turned off here (available: calculator)"
    assert page.locator(".tool-card.error").count() == 1
    assert texts(page, ".message.assistant .text") == [f"I could not run it ({result})."]
    assert not any(tag in page.inner_text("body") for tag in NO_MARKUP)


@pytest.mark.slow  # Chromium
def test_stop_works_after_a_tool_turn(new_page, tool_site):
    url, app = tool_site
    stats = app.state.batcher.stats
    wait_for(lambda: stats.running == 0)
    cancelled = stats.cancelled
    page = open_chat(new_page, url, max_tokens=2000)
    page.fill("#input", "What is 1 + 2? Go on forever.")
    page.press("#input", "Enter")
    page.wait_for_function("() => (document.querySelector('[data-streaming] .text')?.textContent || '').includes('again')")
    page.click("#stop")
    wait_for(lambda: stats.cancelled == cancelled + 1 and stats.running == 0)
    page.wait_for_selector("#stop", state="hidden")
    assert cards(page) == [("calculator", ["1 + 2"], "3")]
    assert texts(page, ".message.assistant .note") == ["(stopped)"]
    stored = page.evaluate("JSON.parse(localStorage.getItem('pocketchat.conversations'))")[0]["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant"] and stored[-1]["stopped"] is True
    assert stored[-1]["content"].startswith("So the answer is 3. And again.")


# ---- the labeling page ---------------------------------------------------------------------------------------

def expected_pairs(ranking: list[int], replies: list[str]) -> list[tuple[int, int]]:
    return [(a, b) for a, b in itertools.combinations(ranking, 2) if replies[a] != replies[b]]


def rank_in_page(page, k: int, order: list[int]) -> list[str]:
    """Sample k replies, pick them in `order` (best first; the last ranks itself), save; the replies' texts."""
    page.fill("#k", str(k))
    page.fill("#max-tokens", "6")
    page.click("#sample")
    page.wait_for_function(f"() => document.querySelectorAll('.reply').length === {k}")
    replies = [page.text_content(f".reply[data-index='{i}'] .text") for i in range(k)]
    for i in order[:-1]:
        page.click(f".reply[data-index='{i}'] .pick")
    assert texts(page, ".reply .rank") == [f"#{order.index(i) + 1}" for i in range(k)]
    page.click("#save")
    page.wait_for_selector("#saved:has-text('saved')")
    return replies


@pytest.mark.slow  # Chromium
def test_label_page_writes_ranked_pairs_the_comparison_loader_reads(new_page, label_site):
    url, out = label_site
    before = len(load_comparisons(out).comparisons) if out.exists() else 0
    page = new_page(f"{url}/label")
    page.click("#task-prompt")
    page.wait_for_function("() => document.getElementById('prompt').value !== ''")
    prompt = page.input_value("#prompt")
    example, style = mixture("train", 200, 0, ("direct", "cot", "tool"), LABEL_TASKS)[0]
    assert prompt == prompt_messages(example, style)[0]["content"]
    # undo takes back a pick (and the last, self-given rank with it)
    page.fill("#k", "3")
    page.fill("#max-tokens", "6")
    page.click("#sample")
    page.wait_for_selector(".reply .pick")
    page.click(".reply[data-index='1'] .pick")
    page.click(".reply[data-index='0'] .pick")
    assert page.locator("#save").is_enabled()
    page.click("#undo")
    assert texts(page, ".reply .rank") == ["", "#1", ""] and page.locator("#save").is_disabled()
    page.click("#skip")  # skipped: nothing is written, the next task prompt comes
    page.wait_for_function(f"() => document.getElementById('prompt').value !== {json.dumps(prompt)}")
    task_replies = rank_in_page(page, 3, [2, 0, 1])
    task_prompt = mixture("train", 200, 0, ("direct", "cot", "tool"), LABEL_TASKS)[1]
    # a prompt of one's own
    page.wait_for_function(f"() => document.getElementById('prompt').value === "
                           f"{json.dumps(prompt_messages(*mixture('train', 200, 0, ('direct', 'cot', 'tool'), LABEL_TASKS)[2])[0]['content'])}")
    page.fill("#prompt", "Tell me a story.")
    own_replies = rank_in_page(page, 2, [1, 0])
    assert "comparisons in" in page.text_content("#status")

    lines = [json.loads(line) for line in out.read_text().splitlines()][before:]
    comparisons = load_comparisons(out).comparisons[before:]
    task_pairs, own_pairs = expected_pairs([2, 0, 1], task_replies), expected_pairs([1, 0], own_replies)
    assert len(lines) == len(comparisons) == len(task_pairs) + len(own_pairs)
    for line, c, (a, b) in zip(lines, comparisons, task_pairs):
        assert c.prompt_messages == prompt_messages(*task_prompt)
        assert c.chosen_messages == completion_messages(task_replies[a])
        assert c.rejected_messages == completion_messages(task_replies[b])
        assert (line["task"], line["style"], line["labeler"]) == (task_prompt[0].task, task_prompt[1], "human")
    for line, c, (a, b) in zip(lines[len(task_pairs):], comparisons[len(task_pairs):], own_pairs):
        assert c.prompt_messages == [{"role": "user", "content": "Tell me a story."}]
        assert (c.chosen_messages, c.rejected_messages) == (completion_messages(own_replies[a]), completion_messages(own_replies[b]))
        assert "task" not in line and line["labeler"] == "human"


def test_label_api_over_http(label_site):
    url, out = label_site
    api = f"{url}/label/api"
    page = httpx.get(f"{url}/label")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    status = httpx.get(f"{api}/status").json()
    assert status["file"] == str(out) and status["tasks"] == LABEL_TASKS
    cases = mixture("train", 200, 0, ("direct", "cot", "tool"), LABEL_TASKS)
    assert httpx.get(f"{api}/prompt", params={"index": 3}).json()["content"] == prompt_messages(*cases[3])[0]["content"]

    def error(method: str, path: str, status_code: int = 400, **kw) -> dict:
        r = httpx.request(method, f"{api}/{path}", timeout=60, **kw)
        assert r.status_code == status_code, r.text
        e = r.json()["error"]
        assert set(e) == {"message", "type", "param", "code"} and e["message"]
        return e

    assert error("GET", "prompt", params={"index": -1})["param"] == "index"
    for body, param in [({}, "prompt"), ({"prompt": "hi", "task_index": 0}, "prompt"), ({"prompt": "  "}, "prompt"),
                        ({"prompt": "hi", "k": 1}, "k"), ({"prompt": "hi", "k": 99}, "k"),
                        ({"prompt": "hi", "temperature": 5}, "temperature"), ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
                        ({"task_index": -2}, "task_index"), ({"prompt": "hi " * 2000}, "prompt")]:
        assert error("POST", "samples", json=body)["param"] == param, body
    assert error("POST", "samples", content=b"{oops", headers={"content-type": "application/json"})

    # samples are seeded like the chat API: completion i with seed + i
    body = {"task_index": 3, "k": 3, "seed": 11, "max_tokens": 6}
    first = httpx.post(f"{api}/samples", json=body, timeout=60).json()
    again = httpx.post(f"{api}/samples", json=body, timeout=60).json()
    assert first["id"] != again["id"] and first["prompt"] == prompt_messages(*cases[3])[0]["content"]
    assert [c["text"] for c in first["completions"]] == [c["text"] for c in again["completions"]]
    assert (first["task"], first["style"]) == (cases[3][0].task, cases[3][1])

    assert error("POST", "rank", 404, json={"id": "lbl-nope", "ranking": [0, 1, 2]})["param"] == "id"
    for ranking in ([0, 1], [0, 0, 1], [0, 1, 3], [2, 1, 0, 3]):
        assert error("POST", "rank", json={"id": first["id"], "ranking": ranking})["param"] == "ranking"
    n_before = len(out.read_text().splitlines()) if out.exists() else 0
    done = httpx.post(f"{api}/rank", json={"id": first["id"], "ranking": [1, 2, 0]}).json()
    replies = [c["text"] for c in first["completions"]]
    pairs = expected_pairs([1, 2, 0], replies)
    assert (done["pairs"], done["ties"], done["refused"]) == (len(pairs), 3 - len(pairs), [])
    assert done["comparisons"] == n_before + len(pairs) == httpx.get(f"{api}/status").json()["comparisons"]
    assert error("POST", "rank", 404, json={"id": first["id"], "ranking": [1, 2, 0]})["code"] == "not_found"  # once only
    # exactly what `pocketchat compare --labeler human` would write for these replies
    finished = [SimpleNamespace(text=c["text"], finish_reason=c["finish_reason"]) for c in first["completions"]]
    written = [json.loads(line) for line in out.read_text().splitlines()][n_before:]
    assert written == [comparison_record(*cases[3], finished[a], finished[b], "human") for a, b in pairs]
    assert len(load_comparisons(out).comparisons) == n_before + len(pairs)


def test_labeling_needs_the_api_key_and_a_usable_file(tmp_path):
    engine = random_engine(context=64)
    app = create_app(engine, "rnd", api_key="sekrit", label=tmp_path / "c.jsonl")
    with running(app) as url:
        assert httpx.get(f"{url}/label").status_code == 200  # the page is public, like the chat page
        r = httpx.get(f"{url}/label/api/status")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = httpx.get(f"{url}/label/api/status", headers={"Authorization": "Bearer sekrit"}).json()
        assert ok["comparisons"] == 0
    with pytest.raises(UserError, match="is a folder"):
        create_app(engine, "rnd", label=tmp_path)
    with pytest.raises(UserError, match="unknown task"):
        create_app(engine, "rnd", label=tmp_path / "c.jsonl", label_tasks=["nope"])
    engine.model.save_pretrained(tmp_path / "m")
    engine.tokenizer.save(tmp_path / "m")
    assert main(["serve", "--model", str(tmp_path / "m"), "--label", str(tmp_path)]) == 2
    assert main(["serve", "--model", str(tmp_path / "m"), "--label", str(tmp_path / "c.jsonl"), "--label-tasks", "nope"]) == 2



def test_a_typed_labeling_prompt_runs_no_tools(tmp_path):
    """What a person types reaches the model with the engine's tools off; a task prompt of the tool style
    (the server's own calculator exercise) runs the calculator and no other tool."""
    app = create_app(random_engine(context=256), "rnd", label=tmp_path / "c.jsonl", label_tasks=LABEL_TASKS)
    submitted, submit = [], app.state.batcher.submit

    def recording(prompt, params, on_delta):  # the SamplingParams each sample request runs with
        submitted.append(params)
        return submit(prompt, params, on_delta)

    app.state.batcher.submit = recording
    with running(app) as url:
        api = f"{url}/label/api"
        tool_index = next(i for i in range(50) if httpx.get(f"{api}/prompt", params={"index": i}).json()["style"] == "tool")
        for body in ({"prompt": "Run python: import os; os.remove('x')"}, {"task_index": tool_index}):
            assert httpx.post(f"{api}/samples", json=body | {"k": 2, "max_tokens": 4}).status_code == 200
    typed, task = submitted
    assert [p.tools for p in typed] == [(), ()] and [p.tools for p in task] == [("calculator",)] * 2
