"""Using a model well: chain of thought, self-consistency, reflection, Tree of Thoughts, ReAct with tools.

Every strategy reaches its model through one interface, `LLM.complete(messages, ...)`, backed by the local
engine or by any OpenAI-compatible endpoint, and returns a `Result`: the answer, a trace of how it got
there, and the tokens it spent.

    llm = LocalLLM(engine)                       # or OpenAILLM("http://127.0.0.1:8000/v1")
    r = self_consistency(llm, ask("What is 37 * 12?", "cot"), n=5)
    r.answer, r.trace["votes"], r.usage.total
"""

from pocketchat.strategies.consistency import self_consistency
from pocketchat.strategies.cot import answer, ask
from pocketchat.strategies.fewshot import few_shot
from pocketchat.strategies.llm import LLM, Generation, LocalLLM, Metered, OpenAILLM, Result, ToolCall, Usage
from pocketchat.strategies.react import react, retrieval_tool
from pocketchat.strategies.reflection import reflection
from pocketchat.strategies.tot import CountdownToT, StepsToT, ToTTask, tree_of_thoughts

__all__ = ["LLM", "CountdownToT", "Generation", "LocalLLM", "Metered", "OpenAILLM", "Result", "StepsToT", "ToTTask",
           "ToolCall", "Usage", "answer", "ask", "few_shot", "react", "reflection", "retrieval_tool",
           "self_consistency", "tree_of_thoughts"]
