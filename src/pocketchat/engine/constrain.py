"""Constrained output: regexes, JSON schemas and choice lists as per-step token masks.

The grammar work is done by `llguidance` (a Rust Earley parser over a token trie, ~tens of µs per mask);
this module only adapts it to our tokenizer and to the engine's hook, `SamplingParams.logits_processor`:
a callable (token ids generated so far for a row, that row's logits) -> bool mask of allowed tokens.

- The vocabulary is handed over as bytes: byte-level BPE token strings go back through GPT-2's byte map,
  added tokens are their text, and special tokens are flagged so no grammar can spell them.
- The grammar's end of sequence is the tokenizer's end of turn (<|im_end|> in ours): the engine stops on it, and
  the grammar allows it only once the value is complete. No other stop token is ever allowed.
- The mask is a pure function of the tokens generated so far: parser states are kept per *prefix*, not
  per row, so one processor serves every row of a batch (n samples of one request share SamplingParams),
  and rows that share a prefix share its state and mask. A prefix that was evicted is replayed from the
  start. Every completion that ends by end of turn is valid; one cut off by max_tokens is a valid prefix.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict

import llguidance
import numpy as np
import torch

from pocketchat.errors import UserError
from pocketchat.json_text import json_object
from pocketchat.tokenizer import UNICODE_TO_BYTE, Tokenizer

# JSON is written the way json.dumps writes it (and the SFT data shows it): ", " and ": ", no other
# whitespace. Flexible whitespace would let a weak model pad forever; a schema's "x-guidance" overrides this.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
MAX_STATES = 1024  # parser states kept per processor; beyond that the least recently used are replayed
PROBE_STEPS = 64  # forced tokens followed from the start when checking that a grammar can be satisfied


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads: every token's bytes, the special ids, eos, and an encoder."""

    def __init__(self, tokenizer: Tokenizer):
        added = {i: t for i, t in tokenizer.hf.get_added_tokens_decoder().items()}
        self.tokens = [b""] * tokenizer.vocab_size  # ids the vocabulary skips stay empty: never allowed
        for text, i in tokenizer.hf.get_vocab(with_added_tokens=True).items():
            if i in added:
                self.tokens[i] = added[i].content.encode("utf-8")
                continue
            try:
                self.tokens[i] = bytes(UNICODE_TO_BYTE[c] for c in text)
            except KeyError:
                raise UserError(f"constrained output needs a byte-level BPE tokenizer; token {i} ({text!r}) "
                                "is not byte-level") from None
        self.special_token_ids = [i for i, t in added.items() if t.special]
        end = tokenizer.end_of_turn_id
        self.eos_token_id = end if end is not None else tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # TokenizerWrapper probes with bytes; it then hands us str
            raise TypeError("expects str")
        return self._encode(text)


_LL_TOKENIZERS: weakref.WeakKeyDictionary[Tokenizer, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()


def ll_tokenizer(tokenizer: Tokenizer) -> llguidance.LLTokenizer:
    """The llguidance view of `tokenizer`, built once per tokenizer (its token trie is the costly part)."""
    if tokenizer not in _LL_TOKENIZERS:
        vocab = _Vocabulary(tokenizer)
        _LL_TOKENIZERS[tokenizer] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocab),
                                                           n_vocab=tokenizer.vocab_size)
    return _LL_TOKENIZERS[tokenizer]


class GrammarProcessor:
    """A logits_processor that allows exactly the tokens that keep the output inside a grammar."""

    def __init__(self, tokenizer: Tokenizer, grammar: str, what: str):
        self.lltok = ll_tokenizer(tokenizer)
        self.decode = tokenizer.decode
        error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltok)
        if error:
            raise UserError(f"{what}: {messages[0]}")
        self.root = llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        self.what = what
        # prefix -> (parser state after it, allowed-token mask there or None until asked)
        self.states: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self._check_satisfiable()

    def __call__(self, generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        entry = self._state(tuple(generated))
        if entry[1] is None:
            entry[1] = self._mask(entry[0])
        mask = entry[1]
        if mask.shape[0] != logits.shape[0]:  # the model's vocabulary may be padded past the tokenizer's
            mask = torch.cat([mask, mask.new_zeros(logits.shape[0] - mask.shape[0])])
        return mask.to(logits.device)

    def _mask(self, matcher) -> torch.Tensor:
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.lltok.vocab_size].view(bool))

    def _check_satisfiable(self) -> None:
        """Refuse, up front, a grammar that no output satisfies, which generation would otherwise end with an
        empty, invalid output or fail on mid-way: a JSON schema that is only a `$ref` to itself (the parser
        fails at once) or that requires itself (every token is forced, without end, and the parser gives up
        on the first). Follows the forced tokens from the start as generation would, PROBE_STEPS at most."""
        matcher = self.root.deep_copy()
        for _ in range(PROBE_STEPS):
            allowed = self._mask(matcher).nonzero()
            if matcher.is_error() or (len(allowed) == 1 and not matcher.consume_token(int(allowed[0]))):
                raise UserError(f"{self.what}: no output can satisfy it (e.g. a schema that is only a reference to "
                                "itself, or that requires itself with no way to end)")
            if len(allowed) != 1 or matcher.is_stopped():
                return  # the output has a choice here, or is complete

    def _state(self, prefix: tuple[int, ...]) -> list:
        entry = self.states.get(prefix)
        if entry is None:
            parent = self.states.get(prefix[:-1]) if prefix else None
            matcher = (parent[0] if parent else self.root).deep_copy()
            for i, token in enumerate(prefix[-1:] if parent else prefix):
                if not matcher.consume_token(token):
                    at = len(prefix) - 1 if parent else i
                    raise UserError(f"{self.what}: token {token} ({self.decode([token])!r}) at completion position "
                                    f"{at} is outside the grammar (constrained output can't follow forced tokens "
                                    "such as tool turns)")
            entry = self.states[prefix] = [matcher, None]
            if len(self.states) > MAX_STATES:
                self.states.popitem(last=False)
        self.states.move_to_end(prefix)
        return entry


def json_schema_processor(tokenizer: Tokenizer, schema: dict | str) -> GrammarProcessor:
    """Outputs that are JSON documents valid under `schema` (a dict or its JSON text)."""
    schema = json_object(schema, "the JSON schema")
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
    return GrammarProcessor(tokenizer, grammar, "JSON schema")


def regex_processor(tokenizer: Tokenizer, pattern: str) -> GrammarProcessor:
    """Outputs that fully match `pattern` (Rust `regex` syntax: the common Python syntax minus lookaround
    and backreferences)."""
    return GrammarProcessor(tokenizer, llguidance.LLMatcher.grammar_from_regex(pattern), f"regex {pattern!r}")


def choice_processor(tokenizer: Tokenizer, choices: list[str]) -> GrammarProcessor:
    """Outputs that are exactly one of `choices`."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"choices must be a non-empty list of non-empty strings, got {choices!r}")
    lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return GrammarProcessor(tokenizer, llguidance.LLMatcher.grammar_from_lark(lark), "choices")
