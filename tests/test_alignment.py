"""Alignment: comparison data, the labelers, the reward model and DPO, and their commands.

Exact where the math allows (hand-computed Bradley-Terry and DPO losses, reward-model parity with
`transformers`, bitwise resume), learning tests on a toy preference (chosen replies say "please", rejected
ones don't) that finish in seconds, and bad input reported as `file:line: reason`."""

import io
import json
import math
import random
import re

import pytest
import torch
import torch.nn as nn

from pocketchat.chat_format import render
from pocketchat.cli import main
from pocketchat.data.comparisons import (Comparison, PairDataset, load_comparisons, load_many, parse_comparison,
                                         split_by_prompt)
from pocketchat.engine import Completion, Engine
from pocketchat.errors import UserError
from pocketchat.labeler import (GOLD_WEIGHTS, LABEL_HELP, ProgrammaticLabeler, StopLabeling, collect_comparisons,
                                label_in_terminal, parse_ranking, ranked_pairs, write_comparisons)
from pocketchat.model import CausalLM, ModelConfig, RewardModel
from pocketchat.tasks import Example, check, format_ok, get_task, prompt_messages
from pocketchat.tokenizer import Tokenizer
from pocketchat.train import dpo, reward
from pocketchat.train.loop import CHECKPOINT

# ---- helpers (the style of test_rl.py) ------------------------------------------------------------------------

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "table", "light", "bread", "house", "plant", "chair",
         "tiger", "ocean", "paper", "glass", "sugar", "horse", "smile", "dream", "storm", "piano", "lemon", "field"]
KEYWORD = "please"
OTHERS = ["today", "maybe", "later", "again"]  # what a rejected reply says where the chosen one says "please"


@pytest.fixture(scope="module")
def tok():
    toy = [f"tell me about {a} and {b}. {a} {KEYWORD} {b} {o}" for a, b, o in zip(WORDS, WORDS[1:] + WORDS[:1], OTHERS * 6)]
    texts = (toy * 5 + ["What is 12 + 34? Answer with just the number. 46", "hello there, how are you"] * 20)
    return Tokenizer.train(texts, vocab_size=300)


def model_config(tok, **kw) -> ModelConfig:
    base = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return ModelConfig(**{**base, **kw})


def tiny_lm(tok, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(model_config(tok))


def unigram_lm(tok, logits: dict[int, float], seed=0) -> CausalLM:
    """A tiny model that samples (almost) from softmax(logits) whatever the context: every embedding carries a
    large constant on dimension 0, so after the final norm that dimension is ~8 everywhere and lm_head's column
    0 acts as a bias. Tokens not in `logits` get -20 (never sampled)."""
    torch.manual_seed(seed)
    model = CausalLM(model_config(tok, tie_word_embeddings=False))
    bias = torch.full((tok.vocab_size,), -20.0)
    for t, v in logits.items():
        bias[t] = v
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[:, 0] = bias / 8
    return model


def digit_ids(tok) -> list[int]:
    return [tok.encode(d)[0] for d in "0123456789"]


def save_folder(model, tok, folder):
    model.save_pretrained(folder)
    tok.save(folder)
    return folder


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def toy_pairs(n: int, seed: int, words=WORDS) -> list[dict]:
    """n comparisons of distinct prompts: the chosen reply says "please" somewhere, the rejected one says
    another word in the same place; otherwise the replies are identical."""
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < n:
        a, b = rng.sample(words, 2)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        reply = rng.sample(words, 3)
        at = rng.randrange(4)
        chosen, rejected = reply[:at] + [KEYWORD] + reply[at:], reply[:at] + [rng.choice(OTHERS)] + reply[at:]
        records.append({"prompt": f"tell me about {a} and {b}", "chosen": " ".join(chosen), "rejected": " ".join(rejected)})
    return records


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_line_error(capsys) -> str:
    """What a refused command printed: exactly one line on stderr, `error: ...`, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def sft(tok, tmp_path_factory):
    return save_folder(tiny_lm(tok), tok, tmp_path_factory.mktemp("sft"))


# ---- 1. comparison data ----------------------------------------------------------------------------------------

USER = {"role": "user", "content": "What is 2 + 2?"}
GOOD = {"role": "assistant", "content": "4"}
BAD = {"role": "assistant", "content": "5"}


def test_every_shape_loads_to_the_same_comparison(tmp_path):
    shapes = [
        {"messages": [USER], "chosen": "4", "rejected": "5"},
        {"prompt": USER["content"], "chosen": GOOD, "rejected": BAD},
        {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},
        {"prompt": [USER], "chosen": [USER, GOOD], "rejected": [USER, BAD]},  # UltraFeedback: the prompt repeated
        {"chosen": "\n\nHuman: What is 2 + 2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2 + 2?\n\nAssistant: 5"},
    ]
    loaded = load_comparisons(write_jsonl(tmp_path / "c.jsonl", shapes + [""])).comparisons  # a blank line is fine
    assert len(loaded) == len(shapes)
    for c in loaded:
        assert c == Comparison([USER], [GOOD], [BAD])


def test_hh_rlhf_multi_turn_transcripts_share_their_prompt():
    shared = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: add 2 and 2"
    c = parse_comparison({"chosen": shared + "\n\nAssistant: 4", "rejected": shared + "\n\nAssistant: no", "margin": 2,
                          "rejected_ended": False, "task": "metadata is ignored"})
    assert c.prompt_messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                 {"role": "user", "content": "add 2 and 2"}]
    assert c.chosen_messages == [{"role": "assistant", "content": "4"}]
    assert c.rejected_messages == [{"role": "assistant", "content": "no"}]
    assert (c.margin, c.chosen_ended, c.rejected_ended) == (2.0, True, False)


def test_a_reply_with_tool_turns_keeps_them():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]}
    reply = [call, {"role": "tool", "name": "calculator", "content": "4"}, {"role": "assistant", "content": "Answer: 4"}]
    assert parse_comparison({"messages": [USER], "chosen": reply, "rejected": "5"}).chosen_messages == reply


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def record(**kw) -> str:
    """A comparison line, good but for what `kw` changes."""
    return json.dumps({"messages": [USER], "chosen": "4", "rejected": "5", **kw})


MALFORMED = [
    ("{not json", "invalid JSON"),
    ('["a", "list"]', "expected a JSON object, got list"),
    (json.dumps({"messages": [USER], "rejected": "5"}), 'no "chosen" key'),
    (json.dumps({"messages": [USER], "chosen": "4"}), 'no "rejected" key'),
    (json.dumps({"chosen": GOOD, "rejected": BAD}), 'no "messages" or "prompt" key'),
    (json.dumps({"chosen": "4", "rejected": "5"}), "expected a transcript"),  # two strings and no prompt: HH-RLHF
    (record(rejected="4"), "chosen and rejected are identical"),
    (record(rejected=GOOD), "chosen and rejected are identical"),  # the same reply, spelled two ways
    (record(chosen=4), "chosen must be a string, a message or a list of messages, not int"),
    (record(rejected=None), "rejected must be a string, a message or a list of messages, not NoneType"),
    (record(messages="not a list"), "messages: messages must be a list"),
    (json.dumps({"prompt": 7, "chosen": "4", "rejected": "5"}), "prompt: messages must be a list"),
    (record(messages=[USER, GOOD]), "messages ends with an assistant turn"),
    (record(chosen=[USER]), "chosen must start and end with an assistant message"),
    (json.dumps({"prompt": [USER], "chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "other"}, BAD]}),
     "rejected must start and end with an assistant message"),  # a whole conversation with another prompt
    (record(chosen=[GOOD, USER, GOOD]), "chosen may only hold assistant and tool messages"),
    (record(chosen={"role": "assistant"}), "chosen: message 0: content is missing"),
    (record(margin="big"), "margin must be a finite number, not 'big'"),
    (record(margin=True), "margin must be a finite number, not True"),
    (record(margin=float("nan")), "margin must be a finite number, not nan"),
    (record(margin=float("inf")), "margin must be a finite number, not inf"),
    (record(chosen_ended="yes"), "chosen_ended must be true or false"),
    (json.dumps({"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+3?\n\nAssistant: 5"}),
     "transcripts differ before their last Assistant turn"),
    (json.dumps({"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: ok",
                 "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}),
     "must end with an Assistant turn"),
    (json.dumps({"chosen": "just text", "rejected": "other text"}), "expected a transcript"),
    (json.dumps({"chosen": "\n\nAssistant: 4", "rejected": "\n\nAssistant: 5"}), "no Human turn before the reply"),
]


@pytest.mark.parametrize("line, reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_a_malformed_record_names_file_line_and_reason(tmp_path, line, reason):
    good = json.dumps({"messages": [USER], "chosen": "4", "rejected": "5"})
    path = write_jsonl(tmp_path / "c.jsonl", [good, "", line, good])
    with pytest.raises(UserError) as e:
        load_comparisons(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert reason in str(e.value)


def test_invalid_utf8_and_missing_or_empty_files(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(json.dumps({"messages": [USER], "chosen": "4", "rejected": "5"}).encode() + b"\n\xff\xfe\n")
    with pytest.raises(UserError, match="^" + re.escape(f"{path}:2: not valid UTF-8")):
        load_comparisons(path)
    with pytest.raises(UserError, match="^" + re.escape(f"{tmp_path / 'nope.jsonl'}: no such file")):
        load_comparisons(tmp_path / "nope.jsonl")
    empty = write_jsonl(tmp_path / "empty.jsonl", [""])
    with pytest.raises(UserError, match="no usable comparisons"):
        load_comparisons(empty)


def test_skip_bad_counts_skips_and_reports_per_file(tmp_path, capsys):
    good = {"messages": [USER], "chosen": "4", "rejected": "5"}
    lines = [good, "{oops", {"messages": [USER], "chosen": "4", "rejected": "4"}, good, {"chosen": 1, "rejected": 2}]
    path = write_jsonl(tmp_path / "c.jsonl", lines)
    result = load_comparisons(path, skip_bad=True)
    assert len(result.comparisons) == 2 and result.skipped == 3
    assert [e.split(": ")[0] for e in result.errors] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    other = write_jsonl(tmp_path / "d.jsonl", [good])
    assert len(load_many(f"{path}, {other}", skip_bad=True)) == 3
    out = capsys.readouterr().out
    assert f"{path}: skipped 3 bad records; first: {path}:2: invalid JSON" in out and "d.jsonl: skipped" not in out
    with pytest.raises(UserError, match="^" + re.escape(f"{path}:2: invalid JSON")):
        load_many(f"{other},{path}")
    all_bad = write_jsonl(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(UserError, match=r"no usable comparisons \(2 bad records skipped\)"):
        load_comparisons(all_bad, skip_bad=True)
    with pytest.raises(UserError, match="no comparison data"):
        load_many(" , ")


def test_split_by_prompt_never_shares_a_prompt(tmp_path):
    comparisons = []
    for p in range(30):
        for r in range(1 + p % 3):  # 1 to 3 comparisons per prompt
            comparisons.append(Comparison([{"role": "user", "content": f"prompt {p}"}], [assistant(f"good {r}")],
                                          [assistant("bad")]))
    key = lambda c: c.prompt_messages[0]["content"]
    for seed in range(5):
        train, held = split_by_prompt(comparisons, 0.2, seed)
        assert {key(c) for c in train}.isdisjoint({key(c) for c in held})
        assert len({key(c) for c in held}) == 6  # 20% of the 30 prompts
        assert sorted(map(repr, train + held)) == sorted(map(repr, comparisons))  # nothing lost or duplicated
        assert split_by_prompt(comparisons, 0.2, seed) == (train, held)  # seeded
    assert split_by_prompt(comparisons, 0.2, 0)[1] != split_by_prompt(comparisons, 0.2, 1)[1]
    assert len(split_by_prompt(comparisons[:2], 0.01, 0)[1]) == 1  # at least one prompt held out, one kept
    with pytest.raises(UserError, match="at least two different prompts"):
        split_by_prompt(comparisons[:1], 0.5, 0)
    with pytest.raises(UserError, match=r"val_fraction must be in \(0, 1\)"):
        split_by_prompt(comparisons, 1.0, 0)


def test_pair_dataset_truncates_the_prompt_pads_right_and_keeps_the_reward_token(tok):
    im_end = tok.token_id("<|im_end|>")
    assert tok.pad_id is not None and tok.pad_id != im_end
    long_prompt = [{"role": "user", "content": " ".join(WORDS * 2)}]
    comparisons = [
        Comparison(long_prompt, [assistant("apple please river")], [assistant("no")], margin=1.5),
        Comparison([{"role": "user", "content": "hi"}], [assistant("hello")], [assistant("hello there friend")], rejected_ended=False),
        Comparison([{"role": "user", "content": "hi"}], [assistant(" ".join(WORDS))], [assistant("x")]),
    ]
    data = PairDataset(comparisons, tok, seq_len=48)
    assert (len(data), data.truncated, data.dropped) == (2, 1, 1)  # the 24-word reply alone is longer than 48 tokens
    b = data.batch([0, 1])
    ids, lengths, mask = b["input_ids"], b["lengths"], b["completion_mask"]
    assert ids.shape[0] == 4 and ids.shape[1] <= 48 and lengths.max() == ids.shape[1]
    assert b["margin"].tolist() == [1.5, 0.0] and b["pair_index"].tolist() == [0, 1]
    for row, (c, side) in enumerate([(comparisons[0], "chosen"), (comparisons[1], "chosen"),
                                     (comparisons[0], "rejected"), (comparisons[1], "rejected")]):
        n = int(lengths[row])
        full, full_mask = render(tok, c.prompt_messages + getattr(c, f"{side}_messages"))
        ended = getattr(c, f"{side}_ended")
        last = max(i for i, t in enumerate(full) if t == im_end)  # the reply's end token (ChatML adds "\n" after it)
        end = last + 1 if ended else last
        # the kept tokens are the end of the rendering, up to and including the reply's <|im_end|> (when it ended)
        assert ids[row, :n].tolist() == full[:end][-n:]
        assert (ids[row, n - 1] == im_end) == ended
        assert ids[row, n:].eq(tok.pad_id).all()  # right padding with <|pad|>
        assert not mask[row, n:].any()
        reply = tok.encode(getattr(c, f"{side}_messages")[0]["content"])
        assert mask[row].sum() == len(reply) + ended  # the reply's own tokens and its end token, nothing else
        assert ids[row][mask[row]].tolist() == reply + [im_end] * ended
    assert lengths[0] == 48 and ids[0, 0] != tok.token_id("<|im_start|>")  # the oldest prompt tokens went


def test_pair_dataset_batches_are_a_pure_function_of_the_step(tok):
    comparisons = [parse_comparison(r) for r in toy_pairs(10, seed=0)]
    a, b = PairDataset(comparisons, tok, 128, seed=3), PairDataset(comparisons, tok, 128, seed=3)
    for step in (7, 0, 3, 7):
        x, y = a.get_batch(step, 4), b.get_batch(step, 4)
        assert all(torch.equal(x[k], y[k]) for k in x)
    halves = [a.get_batch(2, 4, index=i, count=2) for i in range(2)]
    assert torch.cat([h["pair_index"] for h in halves]).tolist() == a.get_batch(2, 4)["pair_index"].tolist()
    epoch = torch.cat([a.get_batch(s, 5)["pair_index"] for s in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))  # an epoch sees every pair once
    with pytest.raises(UserError, match="not divisible"):
        a.get_batch(0, 5, index=0, count=2)


# ---- 2. labelers -----------------------------------------------------------------------------------------------

EXAMPLE = Example(task="add2", question="What is 12 + 34?", answer="46", steps=["12 + 34 = 46"], calls=[], key="add2/12+34")


def completion(text: str, ended: bool = True, sampled: int = 5, forced: int = 0) -> Completion:
    return Completion(token_ids=list(range(sampled + forced)), text=text, finish_reason="stop" if ended else "length",
                      forced=[False] * sampled + [True] * forced)


# (winner, loser): the winner is better by the named rule and ties every earlier one; every later rule favours
# the loser, so the pair is decided by that rule alone. The style is cot: steps, then "Answer: X".
RULES = {
    "correct": (completion("you idiot, Answer: 46", ended=False, sampled=90),
                completion("12 + 34 = 47\nAnswer: 47", sampled=3)),
    "format": (completion("you idiot\nAnswer: 47", ended=False, sampled=90), completion("Answer: 47", sampled=3)),
    "ended": (completion("you idiot\nAnswer: 47", sampled=90), completion("hmm\nAnswer: 47", ended=False, sampled=3)),
    "polite": (completion("well\nAnswer: 47", sampled=90), completion("stupid\nAnswer: 47", sampled=3)),
    "concise": (completion("well\nAnswer: 47", sampled=4), completion("so\nAnswer: 47", sampled=5)),
    "forced tokens are not counted": (completion("well\nAnswer: 47", sampled=2, forced=40),
                                      completion("so\nAnswer: 47", sampled=3)),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_decides_only_when_the_earlier_ones_tie(rule):
    winner, loser = RULES[rule]
    labeler = ProgrammaticLabeler(seed=0)
    kw, kl = labeler.key(EXAMPLE, "cot", winner), labeler.key(EXAMPLE, "cot", loser)
    names = list(GOLD_WEIGHTS)
    decided = names.index(rule) if rule in names else names.index("concise")
    assert kw[:decided] == kl[:decided] and kw[decided] > kl[decided]
    assert all(a <= b for a, b in zip(kw[decided + 1:], kl[decided + 1:]))  # later rules favour the loser
    for seed in range(4):  # in both orders, whatever the tie-breaking coin says
        labeler = ProgrammaticLabeler(seed)
        assert labeler.rank(EXAMPLE, "cot", [winner, loser]) == [0, 1]
        assert labeler.rank(EXAMPLE, "cot", [loser, winner]) == [1, 0]
        assert labeler.gold_score(EXAMPLE, "cot", winner) > labeler.gold_score(EXAMPLE, "cot", loser)


def test_the_rules_read_the_task_checker_and_format():
    assert check(EXAMPLE, "you idiot, Answer: 46") and not format_ok(EXAMPLE, "you idiot, Answer: 46", "cot")
    assert format_ok(EXAMPLE, "12 + 34 = 46\nAnswer: 46", "cot") and format_ok(EXAMPLE, "46", "direct")
    labeler = ProgrammaticLabeler()
    assert labeler.key(EXAMPLE, "direct", completion("46", sampled=3)) == (True, True, True, True, -3)
    rude = completion("You are useless. 46", ended=False, sampled=7)  # right (its last number), nothing else
    assert labeler.key(EXAMPLE, "direct", rude) == (True, False, False, False, -7)


def every_kind_of_completion() -> list[Completion]:
    texts = ["46", "47", "Answer: 46", "12 + 34 = 46\nAnswer: 46", "idiot\nAnswer: 46", "stupid, Answer: 46",
             "12 + 34 = 47\nAnswer: 47", "no idea", "shut up", ""]
    return [completion(t, ended, sampled, forced) for t in texts for ended in (True, False)
            for sampled, forced in ((1, 0), (8, 30), (64, 0), (400, 2))]


@pytest.mark.parametrize("style", ["direct", "cot"])
def test_gold_score_orders_completions_exactly_like_rank(style):
    labeler = ProgrammaticLabeler(seed=1)
    group = every_kind_of_completion()
    random.Random(0).shuffle(group)
    keys = [labeler.key(EXAMPLE, style, c) for c in group]
    gold = [labeler.gold_score(EXAMPLE, style, c) for c in group]
    assert all(0 < g <= 1 for g in gold)
    assert max(gold) > GOLD_WEIGHTS["correct"] + GOLD_WEIGHTS["format"] and min(gold) < GOLD_WEIGHTS["concise"]
    for i in range(len(group)):
        for j in range(len(group)):
            assert (keys[i] > keys[j]) == (gold[i] > gold[j]), (group[i], group[j])
    ranking = labeler.rank(EXAMPLE, style, group)
    ranked_gold = [gold[i] for i in ranking]
    assert ranked_gold == sorted(gold, reverse=True)
    # a perfect completion scores 1 minus the concision it spent: gold = 0.98 + 0.02 / (1 + tokens / 64)
    best = completion("46" if style == "direct" else "12 + 34 = 46\nAnswer: 46", sampled=64)
    assert labeler.gold_score(EXAMPLE, style, best) == pytest.approx(0.98 + 0.01)


def test_ties_are_broken_by_a_seeded_coin_that_ignores_what_came_before():
    examples = get_task("add2").generate("train", 12, seed=0)
    tied = [completion("no", sampled=3), completion("nah", sampled=3), completion("nope", sampled=3)]  # equal keys

    def rankings(labeler):
        return [tuple(labeler.rank(e, "direct", tied)) for e in examples]

    fresh = rankings(ProgrammaticLabeler(seed=5))
    busy = ProgrammaticLabeler(seed=5)
    busy.rank(EXAMPLE, "cot", every_kind_of_completion())
    random.seed(123)  # the global RNG has no say either
    assert rankings(busy) == fresh
    # labeling the same prompts in another order gives each the same ranking
    assert [tuple(ProgrammaticLabeler(seed=5).rank(e, "direct", tied)) for e in reversed(examples)] == fresh[::-1]
    assert len(set(fresh)) > 1  # the coin depends on the instance
    assert rankings(ProgrammaticLabeler(seed=6)) != fresh  # and on the seed


def test_parse_ranking_accepts_permutations_only():
    assert parse_ranking("2 1 3", 3) == [1, 0, 2]
    assert parse_ranking(" 3,1, 2 ", 3) == [2, 0, 1]
    assert parse_ranking("1 2", 2) == [0, 1]
    for answer, message in [("2 1", "missing 3"), ("1 1 2", "missing 3; out of range or repeated: 1"),
                            ("1 2 4", "missing 3; out of range or repeated: 4"), ("1 2 3 3", "out of range or repeated: 3"),
                            ("", "missing 1, 2, 3"), ("0 1 2", "missing 3; out of range or repeated: 0"),
                            ("a b c", "use the reply numbers only"), ("-1 2 3", "use the reply numbers only"),
                            ("1.5 2 3", "use the reply numbers only")]:
        with pytest.raises(ValueError) as e:
            parse_ranking(answer, 3)
        assert message in str(e.value), (answer, str(e.value))


def scripted(*answers):
    """An `input` that answers from a script (raising EOFError when it runs out) and records its prompts."""
    queue, asked = list(answers), []

    def ask(prompt):
        asked.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)
    ask.asked = asked
    return ask


def test_label_in_terminal_shows_everything_and_asks_again_until_valid():
    shown = []
    ask = scripted("?", "1 1 2", "seven", "3 1 2")
    show = lambda *a: shown.append(" ".join(map(str, a)))
    ranking = label_in_terminal("What is 2 + 2?", ["4", "5", "four"], input=ask, print=show)
    assert ranking == [2, 0, 1]
    text = "\n".join(shown)
    assert "What is 2 + 2?" in text and all(f"[{i}]\n{r}" in text for i, r in [(1, "4"), (2, "5"), (3, "four")])
    assert LABEL_HELP in text
    assert sum(line.startswith("not a ranking:") for line in shown) == 2
    assert len(ask.asked) == 4 and "s = skip, q = quit" in ask.asked[0]
    quiet = dict(print=lambda *a: None)
    assert label_in_terminal("p", ["a", "b"], input=scripted(" S "), **quiet) is None
    assert label_in_terminal("p", ["a", "b"], input=scripted("skip"), **quiet) is None
    for stop in (scripted("q"), scripted("Quit"), scripted()):  # q, quit, end of input
        with pytest.raises(StopLabeling):
            label_in_terminal("p", ["a", "b"], input=stop, **quiet)


def test_ranked_pairs_leave_out_ties():
    assert ranked_pairs([2, 0, 1], ["a", "b", "c"]) == ([(2, 0), (2, 1), (0, 1)], 0)
    assert ranked_pairs([2, 0, 1], ["a", "b", "a"]) == ([(2, 1), (0, 1)], 1)  # identical texts
    keys = [(1, 0), (1, 0), (0, 0)]
    assert ranked_pairs([0, 1, 2], ["a", "b", "c"], keys) == ([(0, 2), (1, 2)], 1)  # only the coin ordered 0 and 1


@pytest.fixture(scope="module")
def digit_model(tok):
    """Replies of random digits that end (<|im_end|>) about a fifth of the time per token: sometimes cut off,
    of many lengths, rarely right. Enough variety for the labeler's rules to order them."""
    return unigram_lm(tok, {**{d: 1.0 for d in digit_ids(tok)}, tok.token_id("<|im_end|>"): 2.0})


def test_collect_comparisons_writes_what_the_labeler_ranked(tok, digit_model, tmp_path):
    cases = [(e, "direct") for e in get_task("add2").generate("train", 6, seed=0)]
    path = tmp_path / "c.jsonl"
    stats = write_comparisons(Engine(digit_model, tok), cases, 4, path, seed=0, max_tokens=6)
    loaded = load_comparisons(path).comparisons
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert stats.prompts == 6 and stats.pairs == len(loaded) == len(records) > 0
    assert stats.pairs + stats.ties == 6 * 6  # every one of the C(4, 2) pairs of each prompt, written or tied
    assert {r["labeler"] for r in records} == {"program"} and {r["task"] for r in records} == {"add2"}
    by_prompt = {prompt_messages(e, s)[0]["content"]: e for e, s in cases}
    labeler = ProgrammaticLabeler(0)
    for r, c in zip(records, loaded):
        example = by_prompt[r["messages"][0]["content"]]
        assert c.prompt_messages == r["messages"] and not c.margin

        def key(side):  # a digit reply is one token a digit, plus the end token when it ended
            text, ended = r[side][0]["content"], r[f"{side}_ended"]
            return labeler.key(example, "direct", completion(text, ended, sampled=len(text) + ended))
        assert key("chosen") > key("rejected")  # every pair points from better to worse, and is no tie
    assert any(not r["rejected_ended"] for r in records)
    again = tmp_path / "again.jsonl"
    assert write_comparisons(Engine(digit_model, tok), cases, 4, again, seed=0, max_tokens=6) == stats
    assert again.read_text() == path.read_text()  # seeded samples and coin


def test_collect_comparisons_with_a_person_skips_and_stops(tok, digit_model):
    cases = [(e, "direct") for e in get_task("add2").generate("train", 5, seed=1)]
    seen = []

    def person(prompt, texts):
        seen.append((prompt, texts))
        if len(seen) == 2:
            return None  # skip
        if len(seen) == 4:
            raise StopLabeling
        return list(range(len(texts)))[::-1]  # the last sample is best

    out = io.StringIO()
    stats = collect_comparisons(Engine(digit_model, tok), cases, 3, out, labeler="human", ask=person, max_tokens=6, chunk=2)
    assert len(seen) == 4 and seen[0][0] == prompt_messages(*cases[0])[0]["content"]
    assert (stats.prompts, stats.skipped) == (2, 1)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == stats.pairs == 6 - stats.ties and {r["labeler"] for r in records} == {"human"}
    for prompt, texts in (seen[0], seen[2]):
        expected = [(texts[a], texts[b]) for a, b in ranked_pairs([2, 1, 0], texts)[0]]
        got = [(r["chosen"][0]["content"], r["rejected"][0]["content"])
               for r in records if r["messages"][0]["content"] == prompt]
        assert got == expected
    with pytest.raises(ValueError, match="k must be at least 2"):
        collect_comparisons(Engine(digit_model, tok), cases, 1, out)


# ---- 3. reward model -------------------------------------------------------------------------------------------

class FixedRewards(nn.Module):
    """Stands in for a reward model: returns given rewards (and checks it was asked for the right rows)."""

    def __init__(self, rewards):
        super().__init__()
        self.rewards = torch.tensor(rewards, requires_grad=True)

    def forward(self, input_ids, lengths):
        assert input_ids.shape[0] == lengths.shape[0] == self.rewards.shape[0]
        return self.rewards


def test_rm_loss_is_bradley_terry_with_margin():
    rewards = [2.0, -1.0, 0.5, 0.5, 0.0, 3.0]  # chosen rows, then rejected rows
    batch = {"input_ids": torch.zeros(6, 4, dtype=torch.long), "lengths": torch.full((6,), 4),
             "margin": torch.tensor([1.0, 0.0, 0.5])}
    model = FixedRewards(rewards)
    loss = reward.rm_loss(model, batch)
    # -log sigmoid(x) = log(1 + e^-x), x = r_chosen - r_rejected - margin = (2 - 0.5 - 1, -1 - 0 - 0, 0.5 - 3 - 0.5)
    xs = [0.5, -1.0, -3.0]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-x)) for x in xs) / 3, abs=1e-6)
    loss.backward()
    sig = [1 / (1 + math.exp(x)) for x in xs]  # d/dx log(1 + e^-x) = -sigmoid(-x)
    assert model.rewards.grad.tolist() == pytest.approx([-s / 3 for s in sig] + [s / 3 for s in sig], abs=1e-6)


def parity_rm(tok) -> RewardModel:
    rm = RewardModel.from_causal_lm(tiny_lm(tok, seed=2))
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)  # a head large enough that a misread position shows
    return rm.eval()


@pytest.mark.parametrize("which", ["fresh", "trained"])
def test_reward_model_folder_opens_in_transformers_with_the_same_scores(tok, tmp_path, which, request):
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    if which == "fresh":
        rm, folder = parity_rm(tok), tmp_path / "rm"
        rm.save_pretrained(folder)
        tok.save(folder)
    else:  # what `pocketchat rm` wrote
        folder = request.getfixturevalue("trained_rm")[0]
        rm = RewardModel.from_pretrained(folder).eval()
    hf = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(hf, LlamaForSequenceClassification) and hf.config.pad_token_id == tok.pad_id
    data = PairDataset([parse_comparison(r) for r in toy_pairs(6, seed=1)] + [Comparison(
        [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "a much longer reply than the other one"}],
        [{"role": "assistant", "content": "ok"}], rejected_ended=False)], tok, 128)
    batch = data.batch(range(len(data)))
    ids, lengths = batch["input_ids"], batch["lengths"]
    assert len(set(lengths.tolist())) > 3 and (ids == tok.pad_id).any()  # right-padded rows of many lengths
    assert tok.pad_id != tok.token_id("<|im_end|>")
    with torch.no_grad():
        ours = rm(ids, lengths)
        theirs = hf(input_ids=ids, attention_mask=(torch.arange(ids.shape[1]) < lengths[:, None]).long()).logits.squeeze(-1)
        alone = torch.stack([rm(ids[i:i + 1, :n]).squeeze(0) for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=0)  # padding changes nothing
    assert ours.std() > 0.5  # the scores differ, so the comparison means something
    reopened = RewardModel.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(reopened(ids, lengths), ours, atol=0, rtol=0)
    # `pocketchat score`'s path reads the same rewards from plain conversations
    convs = [[*(c.prompt_messages), *(c.chosen_messages)] for c in [parse_comparison(r) for r in toy_pairs(3, seed=4)]]
    scored = reward.score_conversations(rm, tok, convs, batch_size=2)
    with torch.no_grad():
        direct = [rm(torch.tensor([reward.conversation_ids(tok, m)])).item() for m in convs]
    assert scored == pytest.approx(direct, abs=1e-5)
    with pytest.raises(UserError, match="conversation 1: no assistant turn"):
        reward.score_conversations(rm, tok, [convs[0], [{"role": "user", "content": "hi"}]])


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    train = write_jsonl(folder / "train.jsonl", toy_pairs(96, seed=0, words=WORDS[:16]))
    val = write_jsonl(folder / "val.jsonl", toy_pairs(32, seed=1, words=WORDS[16:]))  # prompts and words unseen
    return train, val


@pytest.fixture(scope="module")
def trained_rm(sft, toy_files, tmp_path_factory):
    """`pocketchat rm` on the toy preference: 30 steps, held-out pairs of unseen prompts and words."""
    out = tmp_path_factory.mktemp("rm") / "run"
    train, val = toy_files
    assert main(["rm", "--model", str(sft), "--data", train, "--out", str(out), "--preset", "smoke", f"--eval_data={val}",
                 "--steps=30", "--batch_size=16", "--seq_len=96", "--lr=3e-3", "--warmup_steps=0", "--schedule=constant",
                 "--eval_every=15", "--log_every=5", "--dtype=float32", "--device=cpu", "--eval_batch_size=32"]) == 0
    return out, [r for r in metrics(out) if "accuracy" in r]


def test_reward_model_learns_a_toy_preference(tok, sft, toy_files, trained_rm):
    out, evals = trained_rm
    val = PairDataset(load_many(toy_files[1]), tok, 96)
    torch.manual_seed(0)
    before = reward.pairwise_eval(RewardModel.from_causal_lm(CausalLM.from_pretrained(sft)), val, 32, "cpu")
    # A fresh head knows nothing: chance-level loss (its accuracy is a coin's: anywhere from 0 to 1 on 32 pairs
    # whose replies differ systematically, so the loss, not the accuracy, is what says "chance").
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=0.02) and abs(before["margin"]) < 0.05
    assert [e["step"] for e in evals] == [15, 30]
    assert evals[-1]["accuracy"] >= 0.9 and evals[-1]["eval_loss"] < 0.3, evals
    losses = [r["train_loss"] for r in metrics(out) if "train_loss" in r]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0]
    stats = json.loads((out / reward.STATS_FILE).read_text())
    assert stats["pairs"] == 32 and stats["accuracy"] == evals[-1]["accuracy"]
    # the saved folder is the trained model: it reproduces the held-out numbers exactly
    again = reward.pairwise_eval(RewardModel.from_pretrained(out), val, 32, "cpu")
    assert again["accuracy"] == stats["accuracy"]
    assert (again["reward_mean"], again["reward_std"]) == pytest.approx((stats["mean"], stats["std"]), abs=1e-5)
    assert reward.read_stats(out) == stats and reward.read_stats(sft) is None


def test_score_command_prints_each_conversations_reward(tok, sft, trained_rm, tmp_path, capsys):
    out, _ = trained_rm
    convs = [[{"role": "user", "content": "tell me about sugar and piano"}, assistant(f"storm {w} lemon field")]
             for w in (KEYWORD, "maybe", KEYWORD)]
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": m} for m in convs])
    assert main(["score", "--rm", str(out), "--data", data, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "conversation\treward\tnormalised\tlast reply" and len(lines) == 4
    rows = [line.split("\t") for line in lines[1:]]
    expected = reward.score_conversations(RewardModel.from_pretrained(out), tok, convs)
    stats = reward.read_stats(out)
    for i, (row, r) in enumerate(zip(rows, expected), start=1):
        assert row[0] == str(i) and float(row[1]) == pytest.approx(r, abs=1e-4)
        assert float(row[2]) == pytest.approx((r - stats["mean"]) / stats["std"], abs=1e-3)
        assert row[3] == repr(convs[i - 1][1]["content"])
    assert expected[0] > expected[1] < expected[2]  # it learned "please"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": convs[0]}, "{"])
    assert main(["score", "--rm", str(out), "--data", bad, "--device", "cpu"]) == 2
    assert f"{bad}:2:" in one_line_error(capsys)
    assert main(["score", "--rm", str(sft), "--data", data, "--device", "cpu"]) == 2  # a language model, no score head
    assert "not a reward model" in one_line_error(capsys)


# ---- 4. DPO ----------------------------------------------------------------------------------------------------

class Uniform(nn.Module):
    """A language model that gives every token of a V-token vocabulary the same probability."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, logits_to_keep=0):
        return torch.zeros(input_ids.shape[0], logits_to_keep or input_ids.shape[1], self.vocab)


def test_dpo_loss_is_the_formula():
    V, beta = 10, 0.3
    mask = torch.zeros(4, 6, dtype=torch.bool)  # chosen rows 0-1, rejected rows 2-3: 3, 1, 2, 4 completion tokens
    for row, n in enumerate([3, 1, 2, 4]):
        mask[row, 6 - n:] = True
    mask[0, 0] = True  # the first position has no prediction: it never counts
    batch = {"input_ids": torch.randint(0, V, (4, 6)), "completion_mask": mask,
             "ref_logps": torch.tensor([-5.0, -1.0, -3.0, -9.0])}
    logps = dpo.completion_logps(Uniform(V), batch)
    assert logps.tolist() == pytest.approx([-3 * math.log(V), -math.log(V), -2 * math.log(V), -4 * math.log(V)])
    # z = beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))); loss = mean log(1 + e^-z)
    ratios = [-3 * math.log(V) + 5, -math.log(V) + 1, -2 * math.log(V) + 3, -4 * math.log(V) + 9]
    zs = [beta * (ratios[0] - ratios[2]), beta * (ratios[1] - ratios[3])]
    expected = sum(math.log1p(math.exp(-z)) for z in zs) / 2
    assert dpo.dpo_loss(Uniform(V), batch, beta).item() == pytest.approx(expected, abs=1e-6)


def test_completion_logps_sum_the_replys_own_tokens(tok):
    model = tiny_lm(tok, seed=3).eval()
    data = PairDataset([parse_comparison(r) for r in toy_pairs(3, seed=2)], tok, 128)
    batch = data.batch(range(3))
    with torch.no_grad():
        got = dpo.completion_logps(model, batch)
        for row in range(6):
            n = int(batch["lengths"][row])
            ids = batch["input_ids"][row, :n]
            logp = model(ids[None]).log_softmax(-1)[0]
            want = sum(logp[p - 1, ids[p]].item() for p in range(1, n) if batch["completion_mask"][row, p])
            assert got[row].item() == pytest.approx(want, abs=1e-4)


def dpo_args(sft, data, out, *extra) -> list[str]:
    return ["dpo", "--model", str(sft), "--data", data, "--out", str(out), "--preset", "smoke", "--seq_len=96",
            "--dtype=float32", "--device=cpu", "--eval_tasks=", "--warmup_steps=0", "--schedule=constant", *extra]


def test_dpo_learns_a_toy_preference_with_reference_logprobs_computed_once(tok, sft, toy_files, tmp_path, monkeypatch):
    import pocketchat.lora

    loaded, ref_forwards, ref_calls = [], [0], [0]
    real_load, real_reference = pocketchat.lora.load_model, dpo.reference_logps

    def load_model(*a, **kw):
        model = real_load(*a, **kw)
        loaded.append(model)
        if len(loaded) == 2:  # policy first, then the frozen reference
            model.register_forward_hook(lambda *_: ref_forwards.__setitem__(0, ref_forwards[0] + 1))
        return model

    def reference_logps(*a, **kw):
        ref_calls[0] += 1
        return real_reference(*a, **kw)

    monkeypatch.setattr(pocketchat.lora, "load_model", load_model)
    monkeypatch.setattr(dpo, "reference_logps", reference_logps)
    train, val = toy_files
    out = tmp_path / "dpo"
    val_data = PairDataset(load_many(val), tok, 96)
    policy = CausalLM.from_pretrained(sft)
    ref_val = real_reference(policy, val_data, 16, torch.device("cpu"), None)
    before = dpo.preference_eval(policy, val_data, ref_val, 0.5, 16, "cpu")
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6) and before["pref_accuracy"] == 0.0  # policy == reference

    assert main(dpo_args(sft, train, out, f"--eval_data={val}", "--steps=30", "--batch_size=8", "--lr=3e-3", "--beta=0.5",
                         "--eval_every=15", "--log_every=1", "--eval_batch_size=16")) == 0
    evals = [r for r in metrics(out) if "pref_accuracy" in r]
    assert [e["step"] for e in evals] == [15, 30]
    assert evals[-1]["pref_accuracy"] >= 0.9 and evals[-1]["reward_margin"] > 0, evals
    losses = [r["train_loss"] for r in metrics(out) if "train_loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # step 1: the policy is the reference, row by row
    assert ref_calls[0] == 2 and ref_forwards[0] == -(-96 // 16) + -(-32 // 16)  # train and held-out pairs, once each
    after = dpo.preference_eval(CausalLM.from_pretrained(out), val_data, ref_val, 0.5, 16, "cpu")
    assert after["pref_accuracy"] == evals[-1]["pref_accuracy"]  # the saved folder is the trained policy


def test_dpo_resumes_after_a_crash_to_identical_weights(sft, toy_files, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    train, val = toy_files
    args = lambda out, *extra: dpo_args(sft, train, out, f"--eval_data={val}", "--steps=8", "--batch_size=4", "--lr=1e-3",
                                        "--save_every=4", "--log_every=1", "--eval_tasks=add2", "--eval_styles=direct",
                                        "--eval_n=2", *extra)
    assert main(args(tmp_path / "a")) == 0
    assert "gold" in capsys.readouterr().out  # the shared policy eval ran on held-out task prompts

    real = PairDataset.get_batch

    def crash_at_step_6(self, step, *a, **kw):
        if step == 6:
            raise KeyboardInterrupt
        return real(self, step, *a, **kw)

    monkeypatch.setattr(PairDataset, "get_batch", crash_at_step_6)
    assert main(args(tmp_path / "b")) == 130
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 4
    monkeypatch.setattr(PairDataset, "get_batch", real)
    capsys.readouterr()
    assert main(args(tmp_path / "b")) == 2 and "already holds a run" in one_line_error(capsys)
    assert main(args(tmp_path / "b", "--resume")) == 0

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rs]
    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))  # no step missing or logged twice
    assert {"pref_accuracy", "gold", "kl"} <= set(metrics(tmp_path / "b")[-1])


# ---- 5. the commands -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_folder(tok, digit_model, tmp_path_factory):
    return save_folder(digit_model, tok, tmp_path_factory.mktemp("digits"))


def test_compare_command_writes_comparisons_the_loader_reads(digit_folder, tmp_path, capsys):
    out = tmp_path / "sub" / "pairs.jsonl"
    assert main(["compare", "--model", str(digit_folder), "--out", str(out), "--n", "4", "--k", "3", "--tasks", "add2,add",
                 "--style", "direct", "--max-tokens", "6", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    comparisons = load_comparisons(out).comparisons
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert printed.startswith(f"{len(comparisons)} comparisons from 4 prompts written to {out}") and comparisons
    assert {r["task"] for r in records} == {"add2", "add"} and {r["style"] for r in records} == {"direct"}
    assert main(["compare", "--model", str(digit_folder), "--out", str(tmp_path / "x.jsonl"), "--k", "1"]) == 2
    assert "--k >= 2" in one_line_error(capsys)
    assert main(["compare", "--model", str(digit_folder), "--out", str(tmp_path / "x.jsonl"), "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in one_line_error(capsys)


def test_compare_command_with_a_person_at_the_terminal(digit_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("2 1\n1 3 2\ns\nq\n"))
    out = tmp_path / "human.jsonl"
    assert main(["compare", "--model", str(digit_folder), "--out", str(out), "--n", "5", "--k", "3", "--tasks", "add2",
                 "--style", "direct", "--max-tokens", "6", "--device", "cpu", "--labeler", "human"]) == 0
    printed = capsys.readouterr().out
    assert "not a ranking: give each of 1..3 exactly once (missing 3)" in printed
    assert "from 1 prompts written" in printed and "1 prompts skipped" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.read_text() else []
    assert {r["labeler"] for r in records} <= {"human"} and len(records) <= 3


def test_rm_and_dpo_commands_refuse_bad_flags_and_data_in_one_line(sft, toy_files, tmp_path, capsys):
    train, _ = toy_files
    bad = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(toy_pairs(1, 0)[0]), "", '{"prompt": "q", "chosen": "a"}'])
    one_prompt = write_jsonl(tmp_path / "one.jsonl", [toy_pairs(1, 0)[0]])
    out = str(tmp_path / "run")
    for stage in ("rm", "dpo"):
        base = [stage, "--model", str(sft), "--out", out, "--preset", "smoke", "--seq_len=96", "--device=cpu"]
        cases = [
            (["--data", train, "--lr=fast"], "lr must be float, got 'fast'"),
            (["--data", train, "--bogus=1"], "unknown config key 'bogus'"),
            (["--data", train, "--preset", "huge"], "huge"),
            (["--data", str(tmp_path / "missing.jsonl")], f"{tmp_path / 'missing.jsonl'}: no such file"),
            (["--data", bad], f"{bad}:3: no \"rejected\" key"),
            (["--data", one_prompt], "at least two different prompts"),
            (["--data", train, "--eval_data", str(tmp_path / "gone.jsonl")], "gone.jsonl: no such file"),
            (["--data", train, "--seq_len=4096"], "seq_len 4096 is longer than the model's context (160)"),
            (["--data", train, "--seq_len=8"], "no comparison fits in seq_len=8"),
            (["--data", train, "--resume"], "--resume: no checkpoint"),
            (["--data", train, "--batch_size=6", "--micro_batch_size=4"], "not divisible by micro_batch_size 4"),
        ]
        if stage == "dpo":
            cases.append((["--data", train, "--beta=0"], "beta must be > 0, got 0.0"))
        else:
            cases.append((["--data", train, "--model", str(tmp_path)], "no tokenizer.json"))
        for extra, message in cases:
            assert main(base + extra) == 2, (stage, extra)
            assert message in one_line_error(capsys), (stage, extra)
        with pytest.raises(SystemExit) as e:  # no --data at all: argparse's usage error, exit status 2
            main(base)
        assert e.value.code == 2 and "the following arguments are required: --data" in capsys.readouterr().err
