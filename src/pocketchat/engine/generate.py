"""The one generation engine: batched prefill + KV-cached decode, sampling, stop rules, tool calls.

Every stage that generates (RL rollouts, evals, strategies, the server, the CLI chat) calls `Engine`.

How a batch runs. All rows share one axis of cache *slots*. Each forward feeds every active row a chunk of
tokens, right-aligned to the widest chunk; the slots left of a shorter chunk are holes that a per-row
`valid` mask hides from attention. Prefill is such a forward (it is left padding), and so is a forced tool
turn, where one row feeds dozens of tokens while the others feed their one sampled token. Positions count
valid slots only, so each row computes exactly what it would compute alone. The plain decode step (one
token per row, no holes anywhere) skips the mask entirely. Finished rows leave the batch at once (the cache
compacts in place), so a long straggler doesn't keep paying for rows that stopped early.

Rows with the same prompt (the n samples of an API request, a self-consistency vote, a GRPO group) share one
prefill: the prompt goes through the model once and its cache rows are copied to every sample.

`Engine(compile=True)` runs the plain decode step as one `torch.compile`d function over the whole cache (the
approach of PyTorch's gpt-fast): the step writes its token at a slot given as a tensor and attends to every
slot under the valid mask, so its shapes and code are the same at every step and it compiles once per batch
layout, not once per length. By default the weights are frozen into it (see `_compile_options`), which suits a
model whose weights stay put while it generates (chat --compile, sample --compile); when they change it compiles
again. `Engine(compile=True, freeze=False)` keeps the weights as inputs of the step instead: an RL learner's engine,
whose weights change after every episode, compiles once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from pocketchat.engine.sampling import Sampler, SamplingParams
from pocketchat.engine.toolcalls import run_tool_call
from pocketchat.errors import UserError
from pocketchat.hardware import check_compile
from pocketchat.model import CausalLM, ModelConfig


@dataclass
class Completion:
    token_ids: list[int]  # sampled and forced tokens; a final stop token is included (RL trains on it)
    text: str  # decoded completion, without the stop token or stop string
    finish_reason: str  # "stop" | "length" | "tool_calls" (a tool call the engine was not allowed to run)
    forced: list[bool]  # True for tokens the engine inserted (tool turns): never train on these
    logprobs: list[float] | None = None  # per token, raw model distribution (also for forced tokens)
    top_logprobs: list[dict[int, float]] | None = None


@dataclass
class StreamEvent:
    """What one decode step added to a streamed completion."""

    text: str  # text that is now safe to show: whole characters, no possible start of a stop string
    token_ids: list[int]
    forced: list[bool]
    finish_reason: str | None = None  # set on the last event only


class KVCache:
    """Keys/values of every layer, preallocated as one [B, n_kv, capacity, head_dim] tensor per layer and per
    key/value, written in place.

    The model calls `update` once per layer per forward and attends over the returned views; `length` (slots
    written) advances when the last layer has written. `valid[b, s]` says whether slot s of row b holds a
    real token or a padding hole; `prepare` / `prepare_step` turn it into the attention mask of a forward.
    A tensor per layer, not one for all layers: the compiled decode step writes each layer's slot in place only
    when that layer's buffer is a tensor of its own (a write into a view of a shared buffer compiles into a copy
    of the whole buffer, at every layer).
    """

    def __init__(self, config: ModelConfig, batch_size: int, capacity: int, dtype: torch.dtype, device):
        shape = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self.batch_size = batch_size  # rows in use; finished rows are compacted away
        self.length = 0
        self.has_holes = False

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, start, end = self.batch_size, self.length, self.length + k.shape[2]
        self.k[layer_idx][:B, :, start:end] = k
        self.v[layer_idx][:B, :, start:end] = v
        if layer_idx == len(self.k) - 1:
            self.length = end
        return self.k[layer_idx][:B, :, :end], self.v[layer_idx][:B, :, :end]

    def prepare_step(self) -> torch.Tensor | None:
        """Mask for one new real token per row: the row's valid slots, or None (attend to all) with no holes."""
        if self.length == self.capacity:
            self.grow(self.length + 1)
        B, end = self.batch_size, self.length + 1
        self.valid[:B, self.length] = True
        return self.valid[:B, None, None, :end] if self.has_holes else None

    def prepare(self, chunk_valid: torch.Tensor) -> torch.Tensor | None:
        """Mask [B, 1, T, S] for a chunk of T slots per row (chunk_valid: [B, T], False = hole), or None for
        plain causal attention when no row has a hole."""
        B, T = chunk_valid.shape
        start, end = self.length, self.length + T
        if end > self.capacity:
            self.grow(end)
        self.valid[:B, start:end] = chunk_valid
        self.has_holes = self.has_holes or not bool(chunk_valid.all())
        if not self.has_holes:
            return None
        slots = torch.arange(end, device=chunk_valid.device)
        queries = torch.arange(start, end, device=chunk_valid.device)
        mask = self.valid[:B, None, :end] & (slots[None, :] <= queries[:, None])  # valid and causal
        # A hole's query attends to its own slot: a query with no allowed key would turn into NaN, and
        # the NaN would reach real rows through the hole's cached keys in the next layer.
        mask |= slots[None, :] == queries[:, None]
        return mask.unsqueeze(1)

    def select(self, rows: torch.Tensor) -> None:
        """Make the batch `rows` (indices into the rows in use, in place): drops finished rows, or repeats a
        shared prompt's rows for each of its samples (the buffers must hold len(rows) rows)."""
        n, L = rows.numel(), self.length
        for t in self.k + self.v:
            t[:n, :, :L] = t[rows, :, :L]
        self.valid[:n, :L] = self.valid[rows, :L]
        self.batch_size = n
        self.has_holes = not bool(self.valid[:n, :L].all())

    def step_view(self) -> "_SlotWrite":
        """The cache as the compiled decode step sees it: whole buffers, the next slot as a tensor."""
        if self.length == self.capacity:
            self.grow(self.length + 1)
        B = self.batch_size
        at = torch.tensor([self.length], device=self.valid.device)
        return _SlotWrite([t[:B] for t in self.k], [t[:B] for t in self.v], self.valid[:B], at)

    def grow(self, needed: int) -> None:
        """Reallocate to at least `needed` slots. Forced tool turns can outgrow a batch's capacity, and the
        Batcher's running cache grows with its rows; doubling keeps the copies rare."""
        capacity, L = max(needed, 2 * self.capacity), self.length
        self.k = [_grown(t, capacity, L) for t in self.k]
        self.v = [_grown(t, capacity, L) for t in self.v]
        valid = self.valid
        self.valid = valid.new_zeros(valid.shape[0], capacity)
        self.valid[:, :L] = valid[:, :L]


def _grown(t: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
    """A copy of layer buffer t [B, n_kv, slots, D] with `capacity` slots, its first `length` slots kept."""
    new = t.new_zeros(t.shape[0], t.shape[1], capacity, t.shape[3])
    new[:, :, :length] = t[:, :, :length]
    return new


class _SlotWrite:
    """One decode step's view of a `KVCache` for the compiled step: writes each layer's new key/value at slot
    `at` (a tensor, so the step's code is the same at every step) and returns the layer's whole buffers."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], valid: torch.Tensor, at: torch.Tensor):
        self.k, self.v, self.valid, self.at = k, v, valid, at

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer_idx].index_copy_(2, self.at, k)
        self.v[layer_idx].index_copy_(2, self.at, v)
        return self.k[layer_idx], self.v[layer_idx]


def _compile_options(device: torch.device, freeze: bool) -> dict:
    """Inductor settings of the compiled decode step. A batch-1 step is a pass over every weight for a few
    multiply-adds each, so it runs at the speed of its matrix-vector products: freezing folds the weights into
    the graph as constants, which lets inductor pack them once for its own GEMM kernels (on CPU the C++
    template, picked by max-autotune against oneDNN), measured ~2x per step on SmolLM2 (README, "Measured").
    Without freezing the step keeps PyTorch's own matmuls and gains from fusing the small ops around them."""
    if not freeze:
        return {}
    options = dict(freezing=True, max_autotune=True)
    if device.type == "cpu":
        # concat_linear: q/k/v, and gate/up, read as one packed matrix each (fewer, longer passes over memory)
        options |= {"max_autotune_gemm_backends": "CPP,ATEN", "cpp.enable_concat_linear": True}
    options["max_autotune_report_choices_stats"] = False  # timing tables on stderr, in the middle of a chat
    return options


class _DecodeStep(torch.nn.Module):
    """One token per row ([B, 1] at positions pos [B]) over the whole cache; returns fp32 logits [B, V].

    Every slot is attended to under the valid mask (unwritten slots are invalid), so no shape depends on the
    step: what `torch.compile` needs to trace it once. A module holding the model, so that under freezing the
    compiler sees the weights as the module's constants rather than as inputs of the graph."""

    made = 0  # _DecodeSteps made in this process

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model
        _DecodeStep.made += 1
        self.key = _DecodeStep.made

    def forward(self, tokens, pos, k, v, valid, at):
        # Frozen weights are constants of the compiled graph, but the compiler guards a module's weights by their
        # shapes only; reading this step's own key here makes it guard on the key too, so a new step (another
        # model, or new weights) compiles afresh instead of reusing a graph that holds other weights.
        if self.key <= 0:
            raise AssertionError("unreachable")
        cache = _SlotWrite(k, v, valid, at)
        valid.index_fill_(1, at, True)
        h = self.model.model(tokens, position_ids=pos.unsqueeze(1), attn_mask=valid[:, None, None, :], cache=cache)
        return self.model.lm_head(h[:, -1]).float()


class TextStream:
    """A completion's text built token by token.

    Holds back a tail of bytes that is not yet a whole UTF-8 character (a byte-level BPE token can end
    mid-character), cuts the text at the first stop string, and for streaming hands out only text that
    cannot turn out to be the start of a stop string.
    """

    def __init__(self, decode, stop: Sequence[str]):
        self.decode, self.stop = decode, list(stop)
        self.ids: list[int] = []
        self.text = ""
        # Decoding a window of recent tokens, not all of them, keeps each step O(1); ids[_prefix:_read] is
        # the window whose text is already in self.text (it gives context, e.g. SentencePiece's leading space).
        self._prefix = self._read = 0
        self._shown = 0  # text[:_shown] has been handed out
        self._checked = 0  # text[:_checked] has been searched for stop strings
        self._search_from = 0  # text before this is forced (tool output): it can't trigger a stop

    def push(self, token_id: int, forced: bool = False) -> None:
        self.ids.append(token_id)
        before = self.decode(self.ids[self._prefix : self._read])
        after = self.decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        if forced:
            self._search_from = self._checked = len(self.text)

    def flush(self) -> None:
        """The sequence ended: emit whatever is held back, broken characters included."""
        before = self.decode(self.ids[self._prefix : self._read])
        self.text += self.decode(self.ids[self._prefix :])[len(before) :]
        self._prefix = self._read = len(self.ids)

    def find_stop(self) -> bool:
        """Cut the text at the earliest stop string that has appeared since the last call; True if one did."""
        hits = [i for s in self.stop if (i := self.text.find(s, max(self._search_from, self._checked - len(s) + 1))) >= 0]
        self._checked = len(self.text)
        if hits:
            self.text = self.text[: min(hits)]
        return bool(hits)

    def take(self, final: bool) -> str:
        """The text not handed out yet, less (unless final) a tail that could still grow into a stop string."""
        end = len(self.text)
        if not final:
            end -= max((k for s in self.stop for k in range(1, len(s))
                        if len(self.text) - k >= max(self._search_from, self._shown) and self.text.endswith(s[:k])),
                       default=0)
        out = self.text[self._shown : end]
        self._shown = max(self._shown, end)
        return out


@dataclass
class Row:
    """One sequence being generated: the Python-side state of a batch row."""

    prompt: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    room: int  # completion tokens still allowed (max_tokens and the context length)
    text: TextStream | None  # kept up to date only when stop strings or streaming need it
    token_ids: list[int] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    pending: int = 0  # trailing forced tokens not yet fed through the model
    tool_calls: int = 0
    finish_reason: str | None = None
    stopped_by_token: bool = False


@dataclass
class Batch:
    rows: list[Row]
    cache: KVCache
    sampler: Sampler
    pos: torch.Tensor  # [B] position of the next token each row feeds (= its real tokens so far)
    logits: torch.Tensor | None = None  # [B, V] fp32, predicting each row's next token
    last: torch.Tensor | None = None  # [B, 1] the tokens just sampled, on device

    @torch.inference_mode()
    def drop_finished(self) -> bool:
        """Compact away finished rows; False when none is left."""
        keep = [i for i, r in enumerate(self.rows) if r.finish_reason is None]
        if len(keep) < len(self.rows) and keep:
            idx = torch.tensor(keep, device=self.pos.device)
            self.rows = [self.rows[i] for i in keep]
            self.cache.select(idx)
            self.sampler.keep(idx, keep)
            self.pos, self.last = self.pos[idx], self.last[idx]
        return bool(keep)


class Engine:
    """Generates from a `CausalLM` with a KV cache. See the module docstring for how batches run.

    device/dtype, when given, move the model in place (nn.Module.to); otherwise the engine uses the model
    as it is, so an RL learner's engine always samples from the current weights. compile: run the decode
    step compiled (see the module docstring; needs a C++ compiler on CPU); freeze: with compile, fold the weights
    into the compiled step (faster at batch 1; False for weights that change between calls, as in RL). tool_turn:
    the chat format's tool turn,
    the token ids forced after a tool call given the tool's output (`chat_format.tool_turn_renderer`); without it the
    engine runs no tools (SamplingParams.tools raises).

    `generate` and `stream` run a batch to its end. The steps they are made of (`new_row`, `prefill`,
    `sample`, `accept`, `decode`, `completion`) are public too, for a caller that runs its own loop over a
    changing batch (`engine.batcher.Batcher`), so a row computes the same there as here.
    """

    def __init__(self, model: CausalLM, tokenizer, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, max_batch_size: int = 64, compile: bool = False,
                 freeze: bool = True, tool_turn: Callable[[str], list[int]] | None = None):
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.max_batch_size = max_batch_size
        self.compile, self.freeze = compile, freeze
        if compile:
            check_compile(self.device)
            self._compile_options = _compile_options(self.device, freeze)
        self._step, self._step_weights = None, None
        tid = tokenizer.token_id
        self.tool_open, self.tool_close = tid("<tool_call>"), tid("</tool_call>")
        self.tool_turn = tool_turn
        eos = self.config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.default_stop_ids = frozenset(i for i in (tokenizer.eos_id, tokenizer.end_of_turn_id, *eos) if i is not None)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id

    # ---- public API ---------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Completion]:
        """Complete each prompt (token ids). Runs batches of up to max_batch_size; returns in prompt order."""
        params = self._params_per_prompt(params, len(prompts))
        for i, p in enumerate(prompts):
            self.check_prompt(p, f"prompt {i}")
        out: list[Completion | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start : start + self.max_batch_size]
            rows = [self.new_row(prompts[i], params[i], track_text=bool(params[i].stop)) for i in chunk]
            for _ in self._run(rows, stream=False):
                pass
            for i, row in zip(chunk, rows):
                out[i] = self.completion(row)
        return out

    def stream(self, prompt: list[int], params: SamplingParams | None = None) -> Iterator[StreamEvent]:
        """Generate one completion, yielding after every step; the texts concatenate to Completion.text."""
        params = params or SamplingParams()
        self.check_prompt(prompt, "prompt")
        yield from self._run([self.new_row(prompt, params, track_text=True)], stream=True)

    # ---- the loop -------------------------------------------------------------------------------------------

    def _run(self, rows: list[Row], stream: bool) -> Iterator[StreamEvent]:
        batch = self.prefill(rows, room=max(r.room for r in rows))
        while True:
            tokens, logprobs, tops = self.sample(batch)
            for i, row in enumerate(batch.rows):
                n = len(row.token_ids)
                self.accept(row, tokens[i], logprobs and logprobs[i], tops and tops[i])
                if stream:
                    yield StreamEvent(row.text.take(final=row.finish_reason is not None), row.token_ids[n:],
                                      row.forced[n:], row.finish_reason)
            if not batch.drop_finished():
                return
            self.decode(batch)

    @torch.inference_mode()
    def prefill(self, rows: list[Row], room: int) -> Batch:
        """The rows' prompts through the model: a batch whose cache has `room` slots free after the widest
        prompt and whose logits predict each row's first token. Rows with the same prompt share its forward
        and copy its cache rows, so the n samples of a prompt cost one prefill."""
        if self.compile:
            self._refresh_step()
        index: dict[tuple[int, ...], int] = {}
        source = [index.setdefault(tuple(r.prompt), len(index)) for r in rows]  # each row's unique prompt
        width = max(len(r.prompt) for r in rows)
        cache = KVCache(self.config, len(rows), width + room, self.dtype, self.device)
        cache.batch_size = len(index)
        pos = torch.zeros(len(index), dtype=torch.long, device=self.device)
        h = self._forward_chunks(cache, pos, [list(p) for p in index])
        logits = self.model.lm_head(h[:, -1]).float()
        if len(index) < len(rows):
            src = torch.tensor(source, device=self.device)
            cache.select(src)
            pos, logits = pos[src], logits[src]
        sampler = Sampler([r.params for r in rows], self.config.vocab_size, self.device)
        return Batch(rows, cache, sampler, pos, logits)

    @torch.inference_mode()
    def decode(self, batch: Batch) -> None:
        """Feed each row what it has not fed yet: its sampled token, plus any forced tool turn after it."""
        if any(r.pending for r in batch.rows):
            self._feed_pending(batch)
        elif self.compile:
            view = batch.cache.step_view()
            with torch._inductor.config.patch(self._compile_options):
                batch.logits = self._step(batch.last, batch.pos, view.k, view.v, view.valid, view.at)
            batch.cache.length += 1
            batch.pos += 1
        else:
            mask = batch.cache.prepare_step()
            h = self.model.model(batch.last, position_ids=batch.pos.unsqueeze(1), attn_mask=mask, cache=batch.cache)
            batch.pos += 1
            batch.logits = self.model.lm_head(h[:, -1]).float()

    def _refresh_step(self) -> None:
        """(Re)compile the decode step when the weights are not the ones it froze: an optimizer step or a loaded
        state dict writes them in place (which bumps each tensor's version), or a parameter was replaced. Unfrozen,
        the step reads the weights as they are: it compiles once."""
        weights = tuple((p.data_ptr(), p._version) for p in self.model.parameters()) if self.freeze else ()
        if self._step is None or weights != self._step_weights:
            from torch._inductor import select_algorithm  # imported here: it loads the whole compiler

            select_algorithm.PRINT_AUTOTUNE = False  # its other timing tables (the module has no setting for them)
            # dynamic: one graph for every batch size and cache capacity (rows finish, prompts differ in length).
            self._step = torch.compile(_DecodeStep(self.model), dynamic=True)
            self._step_weights = weights

    def _feed_pending(self, batch: Batch) -> None:
        """A chunk per row: the sampled token and the forced tool turn after it (rows without one feed one
        token); fills in the forced tokens' logprobs where asked."""
        chunks = [r.token_ids[-1 - r.pending :] for r in batch.rows]
        width = max(len(c) for c in chunks)
        h = self._forward_chunks(batch.cache, batch.pos, chunks)
        batch.logits = self.model.lm_head(h[:, -1]).float()
        for i, row in enumerate(batch.rows):
            if row.pending and (row.params.logprobs or row.params.top_logprobs):
                n = row.pending
                logp = self.model.lm_head(h[i, width - 1 - n : width - 1]).float().log_softmax(-1)
                forced = torch.tensor(row.token_ids[-n:], device=self.device)
                row.logprobs[-n:] = logp.gather(1, forced.unsqueeze(1)).squeeze(1).tolist()
                if row.params.top_logprobs:
                    row.top_logprobs[-n:] = _top(logp, [row.params.top_logprobs] * n)
            row.pending = 0

    def _forward_chunks(self, cache: KVCache, pos: torch.Tensor, chunks: list[list[int]]) -> torch.Tensor:
        """Feed chunk i to cache row i, right-aligned (holes on the left); advances pos; returns the hidden
        states [B, width, d]. The body, not model(): the LM head runs only where logits are needed."""
        width = max(len(c) for c in chunks)
        ids = torch.tensor([[self.pad_id] * (width - len(c)) + c for c in chunks], device=self.device)
        lengths = torch.tensor([len(c) for c in chunks], device=self.device)
        offset = torch.arange(width, device=self.device) - (width - lengths).unsqueeze(1)  # < 0: a hole
        mask = cache.prepare(offset >= 0)
        positions = (pos.unsqueeze(1) + offset).clamp(min=0)
        h = self.model.model(ids, position_ids=positions, attn_mask=mask, cache=cache)
        pos += lengths
        return h

    @torch.inference_mode()
    def sample(self, batch: Batch):
        """One token per row, with (if any row asked) its logprob and the top alternatives."""
        logits, rows = batch.logits, batch.rows
        allowed = None
        if any(r.params.logits_processor for r in rows):
            allowed = torch.ones_like(logits, dtype=torch.bool)
            for i, r in enumerate(rows):
                if r.params.logits_processor and (m := r.params.logits_processor(r.token_ids, logits[i])) is not None:
                    allowed[i] = m
                    if not bool(allowed[i].any()):
                        raise UserError(f"logits_processor allowed no token at completion position {len(r.token_ids)}")
        tokens = batch.sampler(logits, allowed)
        batch.last = tokens.unsqueeze(1)
        logprobs = tops = None
        if any(r.params.logprobs or r.params.top_logprobs for r in rows):
            logp = logits.log_softmax(-1)
            logprobs = logp.gather(1, batch.last).squeeze(1).tolist()
            if any(r.params.top_logprobs for r in rows):
                tops = _top(logp, [r.params.top_logprobs for r in rows])
        return tokens.tolist(), logprobs, tops

    # ---- per-row bookkeeping --------------------------------------------------------------------------------

    def accept(self, row: Row, token: int, logprob: float | None, top: dict | None) -> None:
        row.token_ids.append(token)
        row.forced.append(False)
        if row.params.logprobs:
            row.logprobs.append(logprob)
        if row.params.top_logprobs:
            row.top_logprobs.append(top)
        row.room -= 1
        if token in row.stop_ids:
            row.stopped_by_token = True
            return self._finish(row, "stop")
        if row.text is not None:
            row.text.push(token)
            if row.text.find_stop():
                return self._finish(row, "stop")
        if token == self.tool_close:
            if not row.params.tools or row.tool_calls >= row.params.max_tool_calls:
                return self._finish(row, "tool_calls")
            turn = self._tool_turn(row)
            if len(turn) >= row.room:  # no room for the turn and an answer after it
                return self._finish(row, "length")
            row.tool_calls += 1
            row.pending = len(turn)
            row.room -= len(turn)
            row.token_ids += turn
            row.forced += [True] * len(turn)
            if row.params.logprobs:
                row.logprobs += [0.0] * len(turn)  # filled in when the turn is fed through the model
            if row.params.top_logprobs:
                row.top_logprobs += [{}] * len(turn)
            if row.text is not None:
                for t in turn:
                    row.text.push(t, forced=True)
        if row.room <= 0:
            self._finish(row, "length")

    def _finish(self, row: Row, reason: str) -> None:
        row.finish_reason = reason
        if row.text is not None and not (reason == "stop" and not row.stopped_by_token):
            row.text.flush()  # a stop string already cut the text; anything else ends mid-stream

    def _tool_turn(self, row: Row) -> list[int]:
        """Run the call from the last <tool_call> to the </tool_call> just sampled; return the tokens to force:
        the chat format's tool turn with the output in it (`self.tool_turn`), so the model sees the format it
        was trained on."""
        start = len(row.token_ids) - 1
        while start > 0 and not row.forced[start - 1] and row.token_ids[start] != self.tool_open:
            start -= 1
        allowed = None if row.params.tools is True else row.params.tools
        return self.tool_turn(run_tool_call(self.tokenizer.decode(row.token_ids[start:]), allowed=allowed))

    @property
    def can_run_tools(self) -> bool:
        return None not in (self.tool_open, self.tool_close, self.tool_turn)

    def new_row(self, prompt: list[int], params: SamplingParams, track_text: bool) -> Row:
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.default_stop_ids)
        if params.tools and not self.can_run_tools:
            raise UserError("tools=True needs the tokenizer's <tool_call> and </tool_call> special tokens and the chat "
                            "format's tool turn (Engine(tool_turn=chat_format.tool_turn_renderer(tokenizer)))")
        # Token max_pos can still be sampled (from the logits at the last position), it just can't be fed.
        room = min(params.max_tokens, self.config.max_position_embeddings + 1 - len(prompt))
        text = TextStream(self.tokenizer.decode, params.stop) if track_text else None
        return Row(list(prompt), params, stop_ids, room, text)

    def completion(self, row: Row) -> Completion:
        if row.text is not None:
            text = row.text.text
        else:
            text = self.tokenizer.decode(row.token_ids[:-1] if row.stopped_by_token else row.token_ids)
        return Completion(row.token_ids, text, row.finish_reason, row.forced,
                          row.logprobs if row.params.logprobs else None,
                          row.top_logprobs if row.params.top_logprobs else None)

    def _params_per_prompt(self, params, n: int) -> list[SamplingParams]:
        if params is None or isinstance(params, SamplingParams):
            return [params or SamplingParams()] * n
        if len(params) != n:
            raise UserError(f"got {len(params)} SamplingParams for {n} prompts")
        return list(params)

    def check_prompt(self, prompt: list[int], name: str) -> None:
        if len(prompt) == 0:
            raise UserError(f"{name} is empty")
        if len(prompt) > self.config.max_position_embeddings:
            raise UserError(f"{name} has {len(prompt)} tokens; the model's context is {self.config.max_position_embeddings}")
        if min(prompt) < 0 or max(prompt) >= self.config.vocab_size:
            raise UserError(f"{name} has a token id outside the vocabulary [0, {self.config.vocab_size})")


def _top(logp: torch.Tensor, ns: list[int]) -> list[dict[int, float]]:
    """The ns[i] most likely tokens of each row of logp [N, V], as {token_id: logprob}, most likely first."""
    values, ids = logp.topk(max(ns), dim=-1)
    return [dict(zip(i[:n], v[:n])) for i, v, n in zip(ids.tolist(), values.tolist(), ns)]
