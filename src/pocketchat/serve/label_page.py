"""The browser labeling view: the recipe's contractor step, in a page at /label.

    GET  /label               the page (static/label.html + label.js)
    GET  /label/api/status    the output file, how many comparisons it holds, the tasks prompts come from
    GET  /label/api/prompt    ?index=N: the N-th prompt of the task suite's train split (`tasks.mixture`)
    POST /label/api/samples   {task_index | prompt, k, temperature, top_p, max_tokens, seed}: k sampled replies
    POST /label/api/rank      {id, ranking}: the person's ranking, best first; every ranked pair is appended

A sampled set is kept on the server until it is ranked (the most recent MAX_PENDING sets), so what is
written is exactly what the model said, finish reasons included, whatever the page sends back. Records are
the ones `pocketchat compare` writes (`labeler.comparison_record` for task-suite prompts, the same keys for
a typed prompt), each checked with the comparison loader's own parser before it is written; pairs of
identical replies are left out (`labeler.ranked_pairs`). One ranking's lines go out in one write, then
flush and fsync, so a killed server leaves whole lines. Samples go through the server's batcher, next to
the chat traffic. Task prompts of the tool style run the calculator, as `compare` does (the prompt is the
server's: a calculator exercise), and only the calculator: a call to any other tool gets a refusal as its
result; a typed prompt runs no tool, so what a person types can't lead the model to run code.

The labeling state (`Labeling`) lives on `app.state.labeling`; create_app sets it and includes `router`
only when the server runs with --label.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Sequence

from fastapi import APIRouter, Depends, Request

from pocketchat.chat_format import completion_messages, render_prompt
from pocketchat.data.comparisons import parse_comparison
from pocketchat.engine import Completion, Engine, SamplingParams
from pocketchat.errors import UserError
from pocketchat.labeler import comparison_record, ranked_pairs
from pocketchat.serve.errors import APIError
from pocketchat.serve.jobs import Job
from pocketchat.serve.pages import page
from pocketchat.serve.schemas import LabelRankRequest, LabelSamplesRequest
from pocketchat.serve.state import Server, authorize, sample_seeds
from pocketchat.tasks import STYLES, Example, get_task, mixture, prompt_messages

LABELER = "human"  # the record's labeler, as `pocketchat compare --labeler human` writes it
MAX_PENDING = 256  # sampled sets waiting for a ranking; older ones are forgotten
PER_TASK = 200  # task-suite prompts drawn per task (the index wraps around after all of them)
DEFAULT_TASKS = ["add2", "add", "mul", "word", "count_letters", "sort_list", "units"]  # as `compare` draws
LABEL_TOOLS = ("calculator",)  # what the tool-style task prompts are exercises for


@dataclass
class SampleSet:
    messages: list[dict]
    example: Example | None  # None for a typed prompt
    style: str | None
    completions: list[Completion]


def typed_record(messages: list[dict], chosen: Completion, rejected: Completion) -> dict:
    """`comparison_record`'s line for a prompt that is not a task-suite instance (no task, no style)."""
    return {"messages": messages, "chosen": completion_messages(chosen.text),
            "rejected": completion_messages(rejected.text), "chosen_ended": chosen.finish_reason == "stop",
            "rejected_ended": rejected.finish_reason == "stop", "labeler": LABELER}


class ComparisonFile:
    """Append-only comparison JSONL: whole lines, one write per ranking, flushed and fsynced."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"--label {self.path}: is a folder; give a .jsonl file to append comparisons to")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count, last = 0, b"\n"
        if self.path.exists():
            with self.path.open("rb") as f:
                for line in f:
                    self.count += bool(line.strip())
                    last = line
        self._needs_newline = not last.endswith(b"\n")  # the last line was cut short (a crash mid-write)
        self._lock = threading.Lock()

    def append(self, records: Sequence[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(("\n" if self._needs_newline else "") + text)
                f.flush()
                os.fsync(f.fileno())
            self._needs_newline = False
            self.count += len(records)


class Labeling:
    """The labeling page's state: where comparisons go, the task prompts it draws, the sets awaiting a ranking."""

    def __init__(self, engine: Engine, out: str | Path, tasks: Sequence[str] | None = None,
                 styles: Sequence[str] = STYLES, seed: int = 0):
        self.task_names = [get_task(t).name for t in (DEFAULT_TASKS if tasks is None else tasks)]
        if not self.task_names:
            raise UserError("labeling needs at least one task")
        self.file = ComparisonFile(out)
        self.styles, self.seed = list(styles), seed
        self.can_use_tools = engine.can_run_tools
        self.pending: OrderedDict[str, SampleSet] = OrderedDict()
        self._cases: list[tuple[Example, str]] = []

    def case(self, index: int) -> tuple[Example, str]:
        if not self._cases:
            self._cases.extend(mixture("train", PER_TASK, self.seed, self.styles, self.task_names))
        return self._cases[index % len(self._cases)]

    def keep(self, sample_set: SampleSet) -> str:
        set_id = f"lbl-{uuid.uuid4().hex}"
        self.pending[set_id] = sample_set
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        return set_id


def labeling(request: Request) -> Labeling:
    return request.app.state.labeling


LabelingState = Annotated[Labeling, Depends(labeling)]

# The page itself is public, like the chat page; what it asks for needs the key.
router = APIRouter()
api = APIRouter(prefix="/label/api", dependencies=[Depends(authorize)])


@router.get("/label", include_in_schema=False)
async def label_page():
    return page("label.html")


@api.get("/status")
async def status(lab: LabelingState):
    return {"file": str(lab.file.path), "comparisons": lab.file.count, "tasks": lab.task_names, "styles": lab.styles}


@api.get("/prompt")
async def prompt(lab: LabelingState, index: int = 0):
    if index < 0:
        raise APIError(400, "index must be >= 0", param="index")
    example, style = lab.case(index)
    return {"index": index, "task": example.task, "style": style,
            "content": prompt_messages(example, style)[0]["content"]}


@api.post("/samples")
async def samples(body: LabelSamplesRequest, request: Request, lab: LabelingState, state: Server):
    if (body.task_index is None) == (body.prompt is None):
        raise APIError(400, "give either task_index (a task-suite prompt) or prompt (your own text)",
                       param="prompt")
    state.check_size(body.k, f"k = {body.k}", "k")
    if body.task_index is not None:
        example, style = lab.case(body.task_index)
        messages = prompt_messages(example, style)
        tools = LABEL_TOOLS if style == "tool" and lab.can_use_tools else ()
    else:
        if not body.prompt.strip():
            raise APIError(400, "prompt is empty", param="prompt")
        example, style, tools = None, None, ()
        messages = [{"role": "user", "content": body.prompt}]
    ids = render_prompt(state.tokenizer, messages)
    if len(ids) >= state.context:
        raise APIError(400, f"this model's maximum context length is {state.context} tokens; the prompt has "
                       f"{len(ids)}", param="prompt", code="context_length_exceeded")
    params = [SamplingParams(temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens,
                             tools=tools, seed=seed) for seed in sample_seeds(body.seed, body.k)]
    choices = await Job(state.batcher, [(ids, params)]).collect(request)
    if any(c.completion is None for c in choices):  # the client went away
        raise APIError(503, "the request was cancelled", type="server_error")
    set_id = lab.keep(SampleSet(messages, example, style, [c.completion for c in choices]))
    return {"id": set_id, "prompt": messages[0]["content"], "task": example and example.task, "style": style,
            "completions": [{"index": i, "text": c.completion.text, "finish_reason": c.completion.finish_reason}
                            for i, c in enumerate(choices)]}


@api.post("/rank")
async def rank(body: LabelRankRequest, lab: LabelingState):
    got = lab.pending.get(body.id)
    if got is None:
        raise APIError(404, f"no sampled set {body.id!r} waits for a ranking (ranked already, or forgotten)",
                       param="id", code="not_found")
    k = len(got.completions)
    if sorted(body.ranking) != list(range(k)):
        raise APIError(400, f"ranking must list each reply index 0..{k - 1} exactly once, best first; "
                       f"got {body.ranking}", param="ranking")
    texts = [c.text for c in got.completions]
    pairs, ties = ranked_pairs(body.ranking, texts)
    records, refused = [], []
    for a, b in pairs:
        chosen, rejected = got.completions[a], got.completions[b]
        record = (comparison_record(got.example, got.style, chosen, rejected, LABELER) if got.example is not None
                  else typed_record(got.messages, chosen, rejected))
        try:
            parse_comparison(record)
        except UserError as e:  # e.g. two replies that differ only in what the loader ignores
            refused.append(str(e))
            continue
        records.append(record)
    del lab.pending[body.id]
    if records:
        await asyncio.to_thread(lab.file.append, records)
    return {"pairs": len(records), "ties": ties, "refused": refused, "comparisons": lab.file.count,
            "file": str(lab.file.path)}


router.include_router(api)
