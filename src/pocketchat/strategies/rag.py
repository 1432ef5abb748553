"""Retrieval-augmented generation: put the passages that answer a question into the model's context.

A model cannot know facts it never saw, and a small one barely remembers those it did; given the right
passage, it only has to copy. The prompt is the SFT mixture's grounded-QA format (one of
`pocketchat.data.sft_mixture._QA_PROMPTS`, checked by a test), so a model finetuned on that mixture
reads the retrieved text the way it learned to: the passages replace the single passage it saw there.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketchat.rag.store import Hit, Retriever
from pocketchat.strategies.llm import parallel_map
from pocketchat.tasks.facts import FactQuestion, answer_correct

RAG_PROMPT = "Read the text and answer the question.\n\n{passage}\n\nQuestion: {question}"


@dataclass
class RAGAnswer:
    answer: str
    passages: list[Hit]  # the trace: what was retrieved, best first, with scores and metadata
    prompt: str


def rag_prompt(question: str, passages: list[str]) -> str:
    """The grounded-QA prompt; passages go one per line, best first, as one text."""
    passage = "\n".join(" ".join(p.split()) for p in passages)  # the SFT passages are single lines
    return RAG_PROMPT.format(passage=passage, question=question)


def rag_answer(llm, retriever: Retriever, question: str, k: int = 3, *, max_tokens: int = 64,
               temperature: float = 0.0) -> RAGAnswer:
    """Answer `question` from the k passages `retriever` finds for it (llm: a strategies `LLM`)."""
    hits = retriever.search(question, k)
    prompt = rag_prompt(question, [h.text for h in hits])
    out = llm.complete([{"role": "user", "content": prompt}], n=1, temperature=temperature, max_tokens=max_tokens)
    return RAGAnswer(out[0].text.strip(), hits, prompt)


def rag_eval(llm, retriever: Retriever, questions: list[FactQuestion], k: int = 5, *,
             max_tokens: int = 32, workers: int = 1) -> dict:
    """Retrieval quality and answer accuracy with vs without retrieval, on questions with known answers.

    A retrieved chunk is relevant when it comes from the question's document (metadata "id") and holds
    the answer span. recall (recall@k): share of questions with a relevant chunk in the top k; mrr: mean of
    1 / rank of the first relevant chunk (0 when none is in the top k). accuracy_rag answers from the top
    k chunks; accuracy_closed_book asks the bare question; tokens_rag / tokens_closed_book: prompt +
    generated tokens per question. Retrieval runs first, then the model calls, `workers` at a time."""
    found, reciprocal = 0, 0.0
    prompts = []
    for q in questions:
        hits = retriever.search(q.question, k)
        ranks = [r for r, h in enumerate(hits, 1)
                 if h.metadata.get("id") == q.doc_id and answer_correct(q.answer, h.text)]
        found += bool(ranks)
        reciprocal += 1 / ranks[0] if ranks else 0.0
        prompts.append(rag_prompt(q.question, [h.text for h in hits]))

    def ask(content: str) -> tuple[str, int]:
        (g,) = llm.complete([{"role": "user", "content": content}], n=1, temperature=0.0, max_tokens=max_tokens)
        return g.text, g.prompt_tokens + g.tokens

    replies = parallel_map(llm, ask, [*prompts, *(q.question for q in questions)], workers)
    rag, closed = replies[:len(questions)], replies[len(questions):]
    n = max(len(questions), 1)
    return {"n": len(questions), "k": k, "recall": found / n, "mrr": reciprocal / n,
            "accuracy_rag": sum(answer_correct(q.answer, t) for q, (t, _) in zip(questions, rag)) / n,
            "accuracy_closed_book": sum(answer_correct(q.answer, t) for q, (t, _) in zip(questions, closed)) / n,
            "tokens_rag": sum(c for _, c in rag) / n, "tokens_closed_book": sum(c for _, c in closed) / n}
