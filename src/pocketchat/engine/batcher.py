"""Continuous batching: requests that arrive at any time share the engine's decode steps.

`Engine.generate` runs a fixed batch to its end. A server sees requests come and go, so `Batcher` keeps one
running batch in a background thread and, between two decode steps:

  1. prefills the requests that are waiting (as many as there are free rows) in a batch of their own (the n
     completions of one request share one prefill), and merges their cache rows, logits and sampler rows
     into the running batch;
  2. samples one token for every row and hands each request what its rows added (a `Delta`, through the
     callback given to `submit`);
  3. drops the rows that finished or whose request was cancelled (the cache compacts in place);
  4. runs one decode forward for all remaining rows.

Everything per row (prefill, sampling, stop rules, logprobs, tool turns) is the engine's own code (its step
methods `prefill`, `sample`, `accept`, `decode`), so a request computes here what it computes in
`Engine.generate`.

Where a row's keys sit on the cache's slot axis doesn't matter: RoPE is already applied to cached keys,
positions are kept per row (`Batch.pos`), and a new query attends to the valid slots of its row. So a
joining row's prompt is copied into the last slots of the running cache; when the prompt is longer than
the running rows so far, the running rows get holes appended instead. Slots that belonged to rows that left
become columns of holes; when the cache is full it is compacted (each row's valid slots gathered together),
and grown only if that doesn't free half of it. Memory thus follows the live rows, not the server's uptime.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from pocketchat.engine.generate import Batch, Completion, Engine, KVCache, Row
from pocketchat.engine.sampling import SamplingParams
from pocketchat.errors import UserError

INITIAL_SLOTS = 256  # the running cache starts this long (or the context, if shorter) and grows on demand


class QueueFull(Exception):
    """The waiting queue has no room for the request's completions; the caller should retry later."""


@dataclass
class Delta:
    """What one step added to one of a request's completions."""

    index: int  # which of the request's completions (0 .. n-1)
    text: str  # safe to show: whole characters, never part of a possible stop string
    token_ids: list[int]  # new tokens, less a final stop token (which the text leaves out too)
    logprobs: list[float] | None  # per new token, when the params ask for them
    top_logprobs: list[dict[int, float]] | None
    finish_reason: str | None = None  # "stop" | "length" | "tool_calls" | "cancelled" | "error"; last delta only
    completion: Completion | None = None  # the whole completion, on the last delta
    error: str | None = None  # what went wrong, when finish_reason is "error"


class Ticket:
    """A submitted request: its completions run as rows of the shared batch. `cancel` is thread-safe."""

    def __init__(self, on_delta: Callable[[Delta], None], n: int):
        self.on_delta = on_delta
        self.unfinished = n
        self.cancelled = False

    def cancel(self) -> None:
        # A plain flag: the engine thread reads it once per step, and a bool assignment is atomic.
        self.cancelled = True


@dataclass
class Stats:
    running: int = 0  # rows in the batch now
    queued: int = 0  # completions waiting for a row
    peak_batch: int = 0
    steps: int = 0  # sampling steps (one token for every running row)
    generated_tokens: int = 0
    finished: int = 0  # completions that ended (any reason)
    cancelled: int = 0
    errors: int = 0


@dataclass
class _Waiting:
    ticket: Ticket
    index: int
    row: Row
    error: list[str]  # set by the row's guarded logits_processor (a list so the closure can write it)


class Batcher:
    """Runs an `Engine` over a changing set of requests, in one background thread.

    max_batch: rows decoded together; max_queue: completions that may wait for a row (`submit` raises
    `QueueFull` beyond it). Use as a context manager, or call `start` and `close`.
    """

    def __init__(self, engine: Engine, max_batch: int = 16, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1:
            raise UserError(f"max_batch and max_queue must be >= 1, got {max_batch} and {max_queue}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.stats = Stats()
        self._waiting: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._batch: Batch | None = None  # the running batch; None when no row runs
        self._owners: dict[int, _Waiting] = {}  # id(row) -> its request entry, for the rows in the batch

    # ---- the request side (any thread) ----------------------------------------------------------------------

    def submit(self, prompt: list[int], params: list[SamplingParams], on_delta: Callable[[Delta], None]) -> Ticket:
        """Queue len(params) completions of `prompt`. `on_delta` is called from the engine thread, so it must
        be quick and thread-safe (e.g. `loop.call_soon_threadsafe`). Raises UserError for a bad prompt and
        QueueFull when the queue can't take all the completions."""
        self.engine.check_prompt(prompt, "prompt")
        ticket = Ticket(on_delta, len(params))
        entries = []
        for i, p in enumerate(params):
            error: list[str] = []
            if p.logits_processor is not None:
                p = dataclasses.replace(p, logits_processor=_guarded(p.logits_processor, error))
            entries.append(_Waiting(ticket, i, self.engine.new_row(prompt, p, track_text=True), error))
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(entries) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} completions are already waiting (the queue holds {self.max_queue})")
            self._waiting.extend(entries)
            self.stats.queued = len(self._waiting)
            self._cond.notify()
        return ticket

    def start(self) -> "Batcher":
        self._thread = threading.Thread(target=self._loop, name="pocketchat-batcher", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; requests still waiting or running end with finish_reason "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for entry in [*self._waiting, *self._owners.values()]:
            self._emit(entry, Delta(entry.index, "", [], None, None, "cancelled"))
        self._waiting.clear()
        self._owners.clear()

    def __enter__(self) -> "Batcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the engine thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and self._batch is None:
                    self._cond.wait()
                if self._closed:
                    return
                free = self.max_batch - (len(self._batch.rows) if self._batch else 0)
                joining = []
                while self._waiting and len(joining) < free:
                    entry = self._waiting.popleft()
                    if entry.ticket.cancelled:
                        self._emit(entry, Delta(entry.index, "", [], None, None, "cancelled"))
                    else:
                        joining.append(entry)
                self.stats.queued = len(self._waiting)
            try:
                with torch.inference_mode():
                    self._step(joining)
            except Exception as e:  # a bug or out-of-memory: fail the requests in flight, keep serving
                for entry in self._owners.values():  # the joining rows are registered there first thing
                    self._emit(entry, Delta(entry.index, "", [], None, None, "error", error=f"{type(e).__name__}: {e}"))
                self._owners.clear()
                self._batch = None
                self.stats.running = 0

    def _step(self, joining: list[_Waiting]) -> None:
        if joining:
            for entry in joining:
                self._owners[id(entry.row)] = entry
            self._join(self.engine.prefill([e.row for e in joining], room=0))
        batch = self._batch
        if batch is None:
            return
        self.stats.peak_batch = max(self.stats.peak_batch, len(batch.rows))
        engine = self.engine
        tokens, logprobs, tops = engine.sample(batch)
        self.stats.steps += 1
        self.stats.generated_tokens += len(tokens)
        for i, row in enumerate(batch.rows):
            entry = self._owners[id(row)]
            n = len(row.token_ids)
            engine.accept(row, tokens[i], logprobs and logprobs[i], tops and tops[i])
            if entry.error:
                row.finish_reason = "error"
            elif entry.ticket.cancelled:
                row.finish_reason = "cancelled"
            self._emit(entry, self._delta(entry, row, n))
        if not batch.drop_finished():
            self._batch = None
        else:
            self._reserve(1 + max(r.pending for r in batch.rows))
            engine.decode(batch)
        self.stats.running = len(self._batch.rows) if self._batch else 0

    def _delta(self, entry: _Waiting, row: Row, n: int) -> Delta:
        """What row gained since it had n tokens."""
        done = row.finish_reason is not None
        end = len(row.token_ids) - (done and row.stopped_by_token)  # the stop token is not part of the answer
        ids = row.token_ids[n:end]
        delta = Delta(entry.index, row.text.take(final=done), ids,
                      row.logprobs[n:end] if row.params.logprobs else None,
                      row.top_logprobs[n:end] if row.params.top_logprobs else None, row.finish_reason)
        if done:
            delta.completion = self.engine.completion(row)
            delta.error = entry.error[0] if entry.error else None
            del self._owners[id(row)]
        return delta

    def _emit(self, entry: _Waiting, delta: Delta) -> None:
        ticket = entry.ticket
        if delta.finish_reason is not None:
            ticket.unfinished -= 1
            self.stats.finished += 1
            self.stats.cancelled += delta.finish_reason == "cancelled"
            self.stats.errors += delta.finish_reason == "error"
        try:
            ticket.on_delta(delta)
        except Exception:  # the receiver is gone (e.g. its event loop closed): stop generating for it
            ticket.cancel()

    # ---- joining and the cache ------------------------------------------------------------------------------

    def _join(self, new: Batch) -> None:
        """Merge a prefilled batch into the running one (both hold logits for their next token)."""
        if self._batch is None:
            engine = self.engine
            cache = KVCache(engine.config, self.max_batch, min(INITIAL_SLOTS, engine.config.max_position_embeddings),
                            engine.dtype, engine.device)
            cache.batch_size = 0
            self._batch = Batch([], cache, new.sampler, pos=new.pos[:0], logits=new.logits[:0])
        else:
            self._batch.sampler.extend(new.sampler)
        run, src = self._batch, new.cache
        cache, B, n, width = run.cache, len(run.rows), len(new.rows), src.length
        if width > cache.length:  # the running rows get holes where the longer prompt begins
            self._reserve(width - cache.length)
            cache.valid[:B, cache.length : width] = False
            cache.length = width
        end = cache.length
        for dst, new_rows in zip(cache.k + cache.v, src.k + src.v):
            dst[B : B + n, :, end - width : end] = new_rows[:n, :, :width]
        cache.valid[B : B + n, : end - width] = False
        cache.valid[B : B + n, end - width : end] = src.valid[:n, :width]
        cache.batch_size = B + n
        cache.has_holes = not bool(cache.valid[: B + n, :end].all())
        run.rows = run.rows + new.rows
        run.pos = torch.cat([run.pos, new.pos])
        run.logits = torch.cat([run.logits, new.logits])

    def _reserve(self, slots: int) -> None:
        """Make room for `slots` more slots: compact when full, grow when compacting frees less than half."""
        cache = self._batch.cache
        if cache.length + slots <= cache.capacity:
            return
        _compact(cache)
        if cache.length + slots > cache.capacity // 2:
            cache.grow(2 * (cache.length + slots))


def _compact(cache: KVCache) -> None:
    """Gather each row's valid slots together, right-aligned (in their order), and cut the cache to the
    longest row."""
    B, L = cache.batch_size, cache.length
    valid = cache.valid[:B, :L]
    width = int(valid.sum(1).max()) if B else 0
    # A stable sort puts each row's holes first and its valid slots last, both in their original order.
    idx = valid.to(torch.int8).sort(dim=1, stable=True).indices[:, L - width :]  # [B, width]
    _, heads, _, dim = cache.k[0].shape
    gather = idx[:, None, :, None].expand(B, heads, width, dim)
    for t in cache.k + cache.v:
        t[:B, :, :width] = t[:B, :, :L].gather(2, gather)
    cache.valid[:B, :width] = valid.gather(1, idx)
    cache.length = width
    cache.has_holes = not bool(cache.valid[:B, :width].all())


def _guarded(processor, error: list[str]):
    """A logits_processor whose failure (an exception, or a mask that allows nothing) ends only its own row:
    the message goes to `error` and the row is finished with "error" after this step."""

    def guarded(ids: list[int], logits: torch.Tensor):
        if error:
            return None
        try:
            mask = processor(ids, logits)
        except UserError as e:
            error.append(str(e))
            return None
        if mask is not None and not bool(mask.any()):
            error.append(f"the output constraint allows no token at completion position {len(ids)}")
            return None
        return mask

    return guarded
