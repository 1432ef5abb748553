"""Byte-level BPE tokenizer: trained with Hugging Face `tokenizers`, saved as a Hugging Face folder.

The saved folder (tokenizer.json + tokenizer_config.json) is what `transformers`, vLLM and llama.cpp read,
so a pocketchat checkpoint carries its tokenizer in the ecosystem's format, and any such folder (ours or
e.g. SmolLM2's) loads here.

Encoding has two engines that give identical ids:
- HF `tokenizers` — the reference, works for any tokenizer.json;
- a `tiktoken.Encoding` built from the same BPE ranks — 2-3x faster, used when the tokenizer is a plain
  byte-level BPE whose pre-tokenization tiktoken's regex can reproduce. `_tiktoken_from_hf` checks that
  and falls back to HF otherwise.

`encode` treats special-token strings in the text as ordinary text: a user who types "<|im_end|>" must
not be able to close their own turn (prompt injection). Chat rendering asks for special tokens explicitly
with `allow_special=True`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from pocketchat.errors import UserError

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
EOT, PAD, END_OF_TURN = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1], SPECIAL_TOKENS[3]

# GPT-2's split: contractions, letter runs, number runs, punctuation runs, whitespace. HF's ByteLevel
# pre-tokenizer uses exactly this when use_regex=True.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same split after HF's Digits(individual_digits=True) has cut every digit out on its own. In HF the
# cut ends the piece before a digit, so a whitespace run in front of a digit stays whole instead of
# giving its last space to the next token: hence `\s+(?=\p{N})` ahead of `\s+(?!\S)`.
GPT2_DIGITS_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                       r"""|\s+(?=\p{N})|\s+(?!\S)|\s+""")

# transformers' value for "no length limit" (tokenization_utils_base.VERY_LARGE_INTEGER).
UNBOUNDED_LENGTH = int(1e30)

# Text on which a mapped tiktoken encoding must agree with HF before we trust it: digits next to spaces,
# contractions, mixed scripts, emoji, control characters and special-token look-alikes.
_PROBE_TEXT = ("Hello, world! It's 2024-06-01;  12 345\t67\n\n  8 apples cost $3.50 (don't)\r\n"
               "Ⅻ ½ ² ٣ ＡＢＣ 日本語のテキスト 한국어 Ελληνικά עברית ﷺ e\u0301 🤖👩‍💻 \x00\x07\x1b[0m "
               "<|endoftext|> <|im_start|>user\n'S'LL 'Ve  \u00a0\u2003x   \n\t \n")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:  # unprintable bytes are moved to code points above 255, in byte order
            table[b] = chr(256 + extra)
            extra += 1
    return table


UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def _tiktoken_from_hf(plain: HFTokenizer) -> tiktoken.Encoding | None:
    """Build a tiktoken encoding equivalent to `plain` (an HF tokenizer with encode_special_tokens set),
    or None if tiktoken cannot reproduce it.

    tiktoken merges by the rank of the merged token, HF by the rank of the merge rule; the two agree when
    ids are ranks, i.e. when the merge rules produce tokens in increasing id order and every multi-byte
    token comes from a merge. A probe text guards the remaining corner cases.
    """
    spec = json.loads(plain.to_str())
    model = spec["model"]
    if (model["type"] != "BPE" or spec["normalizer"] is not None or spec["post_processor"] is not None
            or model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or (spec["decoder"] or {}).get("type") != "ByteLevel"):
        return None
    pre = spec["pre_tokenizer"] or {}
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    clean = [{k: v for k, v in s.items() if k != "trim_offsets"} for s in steps]  # offsets don't change ids
    if clean == [byte_level]:
        pattern = GPT2_PATTERN
    elif clean == [digits, byte_level]:
        pattern = GPT2_DIGITS_PATTERN
    else:
        return None

    added = spec["added_tokens"]
    # tiktoken matches special tokens verbatim; HF matches non-special added tokens before BPE and can
    # make a special token swallow neighbouring whitespace (lstrip/rstrip): neither maps to tiktoken
    if any(not t["special"] or t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    special_ids = {t["id"] for t in added}
    try:
        ranks = {bytes(UNICODE_TO_BYTE[c] for c in tok): i
                 for tok, i in model["vocab"].items() if i not in special_ids}
    except KeyError:  # a token outside the byte alphabet: not a byte-level vocabulary
        return None
    if len(ranks) != sum(i not in special_ids for i in model["vocab"].values()):
        return None  # two vocab strings map to the same bytes
    if any(bytes([b]) not in ranks for b in range(256)):
        return None
    merged_ids = []
    for merge in model["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        merged_ids.append(model["vocab"].get(a + b, -1))
    if (-1 in merged_ids or any(x >= y for x, y in zip(merged_ids, merged_ids[1:]))
            or len(ranks) != 256 + len(merged_ids)):
        return None
    enc = tiktoken.Encoding("pocketchat-bpe", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={t["content"]: t["id"] for t in added})
    if enc.encode_ordinary(_PROBE_TEXT) != plain.encode(_PROBE_TEXT, add_special_tokens=False).ids:
        return None
    return enc


def _token_content(value) -> str | None:
    """tokenizer_config.json writes a token as a string or as an AddedToken dict."""
    return value["content"] if isinstance(value, dict) else value


def _is_pocketchat(hf: HFTokenizer) -> bool:
    """A tokenizer `Tokenizer.train` made: SPECIAL_TOKENS hold ids 0..7."""
    return all(hf.token_to_id(t) == i for i, t in enumerate(SPECIAL_TOKENS))


def _adds_bos(hf: HFTokenizer, bos_token: str | None) -> bool:
    """Whether transformers' `tokenizer(text)` starts with the bos token for a foreign folder, so a raw prompt
    here starts the way the model saw text in training. The post-processor in tokenizer.json decides (Llama 3's
    adds <|begin_of_text|>, SmolLM2 has none): transformers 5 ignores add_bos_token in tokenizer_config.json
    when there is a tokenizer.json, and the classes that honoured it before (Llama's) saved it there."""
    bos_id = None if bos_token is None else hf.token_to_id(bos_token)
    ids = hf.encode("a", add_special_tokens=True).ids
    return bos_id is not None and bool(ids) and ids[0] == bos_id


class Tokenizer:
    """A byte-level BPE tokenizer with special tokens; see the module docstring."""

    def __init__(self, hf: HFTokenizer, *, bos_token: str | None, eos_token: str, pad_token: str | None,
                 chat_template: str | None = None, model_max_length: int | None = None, add_bos: bool = True):
        self.hf = hf  # recognises special-token strings in text, like transformers does
        self._plain = HFTokenizer.from_str(hf.to_str())  # treats them as ordinary text
        self._plain.encode_special_tokens = True
        self._tiktoken = _tiktoken_from_hf(self._plain)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        eos_id = self.token_id(eos_token)
        if eos_id is None:
            raise UserError(f"eos token {eos_token!r} is not in the vocabulary")
        self.eos_id: int = eos_id
        self.bos_id = None if bos_token is None else self.token_id(bos_token)
        self.pad_id = None if pad_token is None else self.token_id(pad_token)
        # whether a raw-text prompt starts with bos (`encode_prompt`): always for our own tokenizers, whose
        # pretraining put <|endoftext|> before every document; for a foreign one, what its folder says
        self.add_bos = add_bos and self.bos_id is not None
        self.chat_template = chat_template
        self.model_max_length = model_max_length

    @property
    def end_of_turn_id(self) -> int | None:
        """The token that closes a chat turn (<|im_end|>, which ours reserve and SmolLM2 and Qwen have), or None:
        generation stops there whatever the chat format around it."""
        return self.token_id(END_OF_TURN)

    @property
    def uses_tiktoken(self) -> bool:
        return self._tiktoken is not None

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
        """Train on `texts`; SPECIAL_TOKENS get ids 0..7 and all 256 bytes are in the vocabulary, so any
        text encodes and decodes back exactly."""
        if vocab_size < len(SPECIAL_TOKENS) + 256:
            raise UserError(f"vocab_size {vocab_size} is too small: need at least {len(SPECIAL_TOKENS) + 256} "
                            "(special tokens + 256 bytes)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),  # numbers are learned digit by digit
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer)
        return cls(hf, bos_token=EOT, eos_token=EOT, pad_token=PAD, add_bos=True)

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Load a Hugging Face tokenizer folder (tokenizer.json, optionally tokenizer_config.json).

        The chat template is chat_template.jinja's, else tokenizer_config.json's. A raw-text prompt gets the
        bos token exactly when transformers' `tokenizer(text)` adds it (`_adds_bos`), except with our own
        tokenizers, which always add it (see __init__)."""
        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise UserError(f"{folder}: no tokenizer.json (expected a Hugging Face tokenizer folder)")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception on a malformed file
            raise UserError(f"{file}: cannot load tokenizer: {e}") from e
        config_file = folder / "tokenizer_config.json"
        config = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{config_file}:{e.lineno}: invalid JSON: {e.msg}") from e
        template_file = folder / "chat_template.jinja"  # where transformers saves it now; it wins, as there
        if template_file.is_file():
            config["chat_template"] = template_file.read_text(encoding="utf-8")
        vocab = hf.get_vocab(with_added_tokens=True)
        default_eot = EOT if EOT in vocab else None
        eos = _token_content(config.get("eos_token")) or default_eot
        if eos is None:
            raise UserError(f"{folder}: no eos_token in tokenizer_config.json and no {EOT} in the vocabulary")
        bos = _token_content(config["bos_token"]) if "bos_token" in config else default_eot
        return cls(hf,
                   bos_token=bos,
                   eos_token=eos,
                   pad_token=_token_content(config["pad_token"]) if "pad_token" in config
                   else (PAD if PAD in vocab else None),
                   chat_template=config.get("chat_template"),
                   model_max_length=config.get("model_max_length"),
                   add_bos=_is_pocketchat(hf) or _adds_bos(hf, bos))

    def save(self, path, chat_template: str | None = None, model_max_length: int | None = None) -> None:
        """Write tokenizer.json + tokenizer_config.json that transformers' AutoTokenizer loads.

        The chat template and length limit default to the ones this tokenizer was loaded with.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "model_max_length": model_max_length or self.model_max_length or UNBOUNDED_LENGTH,
            # informational (tokenizer.json's post-processor is what adds bos); ours say false because
            # transformers' tokenizer(text) gives exactly our encode(text)
            "add_bos_token": self.add_bos and not _is_pocketchat(self.hf),
            "add_eos_token": False,
            # transformers would otherwise rewrite " ." to "." on decode, breaking the exact round trip
            "clean_up_tokenization_spaces": False,
        }
        template = chat_template or self.chat_template
        if template is not None:
            config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")

    # -- encoding -----------------------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings become special ids only with allow_special=True
        (for text we rendered ourselves, e.g. a chat template), never for user text."""
        if self._tiktoken is not None:
            if allow_special:
                return self._tiktoken.encode(text, allowed_special="all")
            return self._tiktoken.encode_ordinary(text)
        hf = self.hf if allow_special else self._plain
        return hf.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of a raw-text prompt (not a chat): `encode(text)`, after the bos token if add_bos. For a
        foreign folder that is what transformers' `tokenizer(text)` gives, so generations match its."""
        return ([self.bos_id] if self.add_bos else []) + self.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts, in parallel threads (both engines release the GIL)."""
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary_batch(texts)
        return [e.ids for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    # -- pickling: worker processes get the tokenizer as its JSON, rebuilt on arrival -----------------------

    def __getstate__(self) -> dict:
        return {"json": self.hf.to_str(), "bos_token": self.bos_token, "eos_token": self.eos_token,
                "pad_token": self.pad_token, "chat_template": self.chat_template,
                "model_max_length": self.model_max_length, "add_bos": self.add_bos}

    def __setstate__(self, state: dict) -> None:
        hf = HFTokenizer.from_str(state.pop("json"))
        self.__init__(hf, **state)
