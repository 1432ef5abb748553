"""No request gets a 5xx: property-based fuzzing of the server's whole OpenAPI schema (schemathesis over
hypothesis), then the request shapes that once did, each with the 4xx naming its field.

The server is the real one (uvicorn on 127.0.0.1) over a tiny random model with a short context, so even a
request that generates as much as it may answers in milliseconds; the labeling routes are on. Every route
of the schema gets EXAMPLES generated requests, valid and invalid by the schema (schemathesis' positive and
negative modes), derandomized so CI sees the same requests every run.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from pocketchat.serve.app import create_app
from test_serve import random_engine, running

EXAMPLES = 30  # generated requests per route (8 routes) and mode
CONTEXT = 96  # the model's context: it bounds every generation, whatever max_tokens a request asks for
MAX_QUEUE = 8
# Routes whose generated requests must reach the model. Chat is not among them: its schema can't say which
# roles need content, so nearly every generated conversation is refused; the next test sends valid ones.
GENERATING = ["POST /v1/completions", "POST /label/api/samples"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, app) of a server over the random model, with the labeling page."""
    out = tmp_path_factory.mktemp("fuzz") / "comparisons.jsonl"
    app = create_app(random_engine(context=CONTEXT), "rnd", max_batch=8, max_queue=MAX_QUEUE, label=out,
                     label_tasks=["add2"])
    with running(app) as url:
        yield url, app


def served_model(case):
    """The case with the served model's name where the body names one: a made-up name stops every request at
    the model check (a 404), before anything reaches the engine."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = "rnd"
    return case


@pytest.mark.slow  # schema fuzzing, ~10 s per mode
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_generated_request_gets_a_server_error(served, mode):
    url, app = served
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8, [op.label for op in operations]
    statuses = {op.label: Counter() for op in operations}
    with requests.Session() as session:  # one keep-alive connection: a request that breaks it fails the test
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not (operation.body or operation.query):
                continue  # a route with no input has no invalid request; the positive run calls it

            @given(case=operation.as_strategy(generation_mode=mode).map(served_model))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                response = case.call_and_validate(base_url=url, session=session, checks=[not_a_server_error])
                statuses[case.operation.label][response.status_code] += 1

            fuzz()
    if mode is GenerationMode.POSITIVE:  # the fuzzing reached the model, not only the validation
        for label in GENERATING:
            assert statuses[label][200] > 0, (label, statuses[label])


# Requests the schema allows, with every sampling field at values from its whole range (huge top_k, max_tokens
# and seeds, odd stop strings, unicode): each must be answered in full, streamed or not.
TEXT = st.text(max_size=30)
SAMPLING = {"temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True),
            "top_k": st.integers(0, 2**70), "min_p": st.floats(0, 1), "n": st.integers(1, 3),
            "seed": st.integers(0, 2**64 - 1), "max_tokens": st.integers(1, 2**70), "ignore_eos": st.booleans(),
            "stop": TEXT.filter(bool) | st.lists(st.text(min_size=1, max_size=4), max_size=3), "stream": st.booleans()}
CHAT = st.fixed_dictionaries(
    {"model": st.just("rnd"), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": TEXT}), min_size=1, max_size=3)},
    optional=SAMPLING | {"logprobs": st.just(True), "top_logprobs": st.integers(0, 20),
                        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}])})
COMPLETION = st.fixed_dictionaries(
    {"model": st.just("rnd"), "prompt": TEXT.filter(bool) | st.lists(st.integers(0, 299), min_size=1, max_size=20)},
    optional=SAMPLING | {"logprobs": st.integers(0, 20), "echo": st.booleans()})


@pytest.mark.slow  # fuzzing
@pytest.mark.parametrize("path,bodies", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)],
                         ids=["chat", "completions"])
def test_valid_requests_with_any_sampling_values_are_answered_in_full(served, path, bodies):
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:

        @given(body=bodies)
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answer(body):
            r = client.post(path, json=body)
            assert r.status_code < 500, r.text
            if r.status_code != 200:  # refused: the message names the field
                assert r.json()["error"]["param"] in r.json()["error"]["message"], r.text
            elif body.get("stream"):
                frames = [f.removeprefix("data: ") for f in r.text.split("\n\n") if f]
                assert frames[-1] == "[DONE]" and not any('"error"' in f[:10] for f in frames), r.text
            else:
                assert len(r.json()["choices"]) == body.get("n", 1)  # one prompt in either route

        answer()


@pytest.mark.slow  # checks what the slow fuzzing left
def test_the_server_is_alive_after_the_fuzzing(served):
    url, app = served
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    r = httpx.post(f"{url}/v1/chat/completions", json=GOOD)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert app.state.batcher.stats.errors == 0  # no generation failed on the way


# ---- the shapes that once got a 5xx (issue 17) ------------------------------------------------------------------

GOOD = {"model": "rnd", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
SELF_REFERENCE = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {"$ref": "#"}}}
REQUIRES_ITSELF = {"type": "json_schema", "json_schema": {"name": "loop", "schema": {
    "type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}}}
ONCE_5XX = [
    ("/v1/chat/completions", GOOD | {"seed": 2**70}, "seed"),
    ("/v1/chat/completions", GOOD | {"seed": -1}, "seed"),
    ("/label/api/samples", {"prompt": "hi", "k": 2, "max_tokens": 2, "seed": 2**70}, "seed"),
    ("/v1/completions", {"model": "rnd", "prompt": [-1]}, "prompt"),
    ("/v1/completions", {"model": "rnd", "prompt": [[5, 6], [2**70]]}, "prompt"),
    ("/v1/completions", {"model": "rnd", "prompt": ["hi"] * (MAX_QUEUE + 1), "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"model": "rnd", "prompt": ["hi"] * 3, "n": 3, "max_tokens": 1}, "prompt"),
    ("/v1/chat/completions", GOOD | {"n": MAX_QUEUE + 1}, "n"),
    ("/v1/chat/completions", GOOD | {"response_format": SELF_REFERENCE}, "response_format"),
    ("/v1/chat/completions", GOOD | {"response_format": REQUIRES_ITSELF}, "response_format"),
]


@pytest.mark.parametrize("path,body,param", ONCE_5XX, ids=[f"{p} {f}" for p, _, f in ONCE_5XX])
def test_request_shapes_that_once_got_a_5xx_get_a_400_naming_the_field(served, path, body, param):
    url, _ = served
    with httpx.Client(base_url=url) as client:  # one keep-alive connection: it must survive the error
        r = client.post(path, json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]
        assert client.post("/v1/chat/completions", json=GOOD).status_code == 200


def test_the_largest_seed_with_n_completions_samples(served):
    """Completion i is seeded with seed + i, wrapped to 64 bits: the last seed and its successor both work."""
    url, _ = served
    r = httpx.post(f"{url}/v1/chat/completions", json=GOOD | {"seed": 2**64 - 1, "n": 2, "temperature": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    wrapped = httpx.post(f"{url}/v1/chat/completions", json=GOOD | {"seed": 0, "n": 1, "temperature": 1})
    assert wrapped.json()["choices"][0]["message"] == r.json()["choices"][1]["message"]


def test_every_response_says_nosniff(served):
    url, _ = served
    for path in ("/", "/static/app.js", "/health", "/v1/models", "/v1/nothing", "/label"):
        assert httpx.get(f"{url}{path}").headers["x-content-type-options"] == "nosniff", path
