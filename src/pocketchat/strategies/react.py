"""ReAct: the model alternates Thought and Action lines; the agent runs each action and reports an Observation.

What a model cannot do well in its weights (exact arithmetic, running code, recalling a fact it never
saw) it can hand to a tool, if it says so in text the agent can parse (Yao et al., 2022):

    Thought: I need 37 times 12.
    Action: calculator[37*12]
    Observation: 444                 <- written by the agent, not the model
    Thought: I know the answer.
    Answer: 444

The exchange is kept as chat turns (the model's reply, then a user turn with the observation), so it
works through any chat endpoint; generation stops at "Observation:" so the model cannot invent one.
Tools are `pocketchat.engine.tools.Tool`s with one required argument, which receives the text between
the brackets: the calculator, the sandboxed Python tool, and `retrieval_tool` over any document store.
An optional planner first has the model write a short task list that then sits in the agent's prompt.

The paper's prompts are few-shot, and a small model needs that: told the format alone, SmolLM2-135M writes
"88 + 30 = 128" and never an Action line; shown two solved exchanges (`DEMOS`, as earlier chat turns) it
calls calculator[88+30]. Demonstrations are given for the tools offered that have one (the calculator).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pocketchat.engine.calculator import CALCULATOR
from pocketchat.engine.sandbox import PYTHON
from pocketchat.engine.tools import Tool, one_string_argument
from pocketchat.errors import UserError
from pocketchat.strategies.llm import LLM, Metered, Result

MAX_OBSERVATION_CHARS = 600  # a long page of search results would crowd out the task in a small context

REACT_PROMPT = """Answer the question. You can use these tools:
{tools}

Work in steps. Each step is
Thought: what to do next
Action: tool_name[input]
and then you get an Observation with the tool's output. When you know the answer, write
Thought: I know the answer.
Answer: the answer
{plan}
Question: {question}"""

# Solved exchanges per tool: (question, [(thought, action input, observation)], answer). A test checks that
# every observation is what the tool really answers.
DEMOS = {"calculator": [
    ("How much is 45 plus 27?", [("I need 45 plus 27.", "45+27", "72")], "72"),
    ("What is 23 times 4, plus 5?", [("I need 23 times 4 first.", "23*4", "92"), ("Now I add 5 to 92.", "92+5", "97")],
     "97"),
]}

PLAN_PROMPT = ("Break this task into a short numbered list of at most 5 steps. Do not solve it yet.\n\n"
               "Task: {question}")

_ACTION = re.compile(r"Action\s*:\s*([A-Za-z_][\w-]*)\s*\[")
_ANSWER = re.compile(r"^[ \t]*(?:final )?answer\s*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s*(.+)$", re.MULTILINE)


class Retriever(Protocol):
    """A document store as ReAct sees it; pocketchat.rag's stores and retrievers are ones."""

    def search(self, query: str, k: int) -> Sequence[tuple[str, float]]: ...


def retrieval_tool(retriever: Retriever, k: int = 3) -> Tool:
    """A `search` tool returning the k best passages for a query, numbered, one per line."""
    def search(query: str) -> str:
        hits = [" ".join(text.split()) for text, _score in retriever.search(query, k)]
        return "\n".join(f"[{i}] {text}" for i, text in enumerate(hits, 1)) or "No results."

    return Tool(name="search", description="Search the documents; returns the most relevant passages.",
                parameters=one_string_argument("query"), fn=search)


DEFAULT_TOOLS = (CALCULATOR, PYTHON)


@dataclass
class Action:
    tool: str
    input: str


def parse_reply(text: str) -> Action | str | None:
    """What a reply does: an Action, a final answer (str), or None when it does neither.

    Whichever comes first wins: an answer written after an action was not based on its observation. The
    action's input runs to the last "]" of the reply, so Python code may hold brackets and newlines."""
    action, answer = _ACTION.search(text), _ANSWER.search(text)
    if action and not (answer and answer.start() < action.start()):
        end = text.rfind("]")
        if end < action.end():
            return None
        if action.group(1).lower() == "finish":  # the original paper's Finish[answer]
            return text[action.end():end].strip()
        return Action(action.group(1), text[action.end():end].strip())
    if answer:
        return answer.group(1).strip() or None
    return None


def _observe(action: Action, tools: dict[str, Tool]) -> str:
    if action.tool not in tools:
        return f"Error: unknown tool {action.tool!r} (available: {', '.join(tools)})"
    tool = tools[action.tool]
    output = tool.run({tool.parameters["required"][0]: action.input})
    return output if len(output) <= MAX_OBSERVATION_CHARS else output[:MAX_OBSERVATION_CHARS] + " ..."


def demonstrations(tools: Sequence[Tool]) -> list[tuple[str, list[dict]]]:
    """The solved exchanges for the tools offered: (question, the turns that answer it)."""
    out = []
    for tool in tools:
        for question, steps, answer in DEMOS.get(tool.name, []):
            turns = []
            for thought, given, observation in steps:
                turns += [{"role": "assistant", "content": f"Thought: {thought}\nAction: {tool.name}[{given}]"},
                          {"role": "user", "content": f"Observation: {observation}"}]
            final = {"role": "assistant", "content": f"Thought: I know the answer.\nAnswer: {answer}"}
            out.append((question, [*turns, final]))
    return out


def react(llm: LLM, question: str, *, tools: Sequence[Tool] = DEFAULT_TOOLS, max_steps: int = 6, plan: bool = False,
          max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None, demos: bool = True) -> Result:
    """Run the Thought / Action / Observation loop for at most `max_steps` model replies.

    demos: start with the solved exchanges of the tools that have them (`DEMOS`); the question then comes
    as its own user turn, "Question: ...", after them.

    Trace: plan (the task list, or None), steps [{text, tool, input, observation}] and stopped ("answer" or
    "step limit"). The answer is None when the step limit came first."""
    for tool in tools:
        if len(tool.parameters.get("required", [])) != 1:
            raise UserError(f"react: tool {tool.name!r} must take exactly one required argument")
    if max_steps < 1:
        raise UserError(f"react: max_steps must be >= 1, got {max_steps}")
    llm, by_name = Metered(llm), {t.name: t for t in tools}
    tasks = None
    if plan:
        (g,) = llm.complete([{"role": "user", "content": PLAN_PROMPT.format(question=question)}],
                            max_tokens=max_tokens, temperature=temperature, seed=seed)
        tasks = [t.strip() for t in _NUMBERED.findall(g.text)][:5]
    listing = "\n".join(f"- {t.name}[{t.parameters['required'][0]}]: {t.description}" for t in tools)
    planned = "\nPlan:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(tasks, 1)) + "\n" if tasks else ""
    shown = demonstrations(tools) if demos else []
    if shown:
        first = REACT_PROMPT.format(tools=listing, plan="", question=shown[0][0])
        convo = [{"role": "user", "content": first}, *shown[0][1]]
        for q, turns in shown[1:]:
            convo += [{"role": "user", "content": f"Question: {q}"}, *turns]
        convo.append({"role": "user", "content": f"{planned.strip()}\n\nQuestion: {question}".lstrip()})
    else:
        convo = [{"role": "user", "content": REACT_PROMPT.format(tools=listing, plan=planned, question=question)}]
    steps: list[dict] = []
    for k in range(max_steps):
        (g,) = llm.complete(convo, max_tokens=max_tokens, temperature=temperature, stop=["Observation:"],
                            seed=None if seed is None else seed + 1 + k)
        text = g.text.strip()
        step = {"text": text, "tool": None, "input": None, "observation": None}
        steps.append(step)
        parsed = parse_reply(text)
        if isinstance(parsed, str):
            return Result(parsed, {"plan": tasks, "steps": steps, "stopped": "answer"}, llm.usage)
        if parsed is None:
            observation = "Error: write an Action line (tool_name[input]) or an Answer line."
        else:
            step.update(tool=parsed.tool, input=parsed.input)
            observation = _observe(parsed, by_name)
        step["observation"] = observation
        convo += [{"role": "assistant", "content": text}, {"role": "user", "content": f"Observation: {observation}"}]
    return Result(None, {"plan": tasks, "steps": steps, "stopped": "step limit"}, llm.usage)
