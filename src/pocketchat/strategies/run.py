"""Strategies by name, on a free question or on held-out task instances: what `pocketchat ask` and the
strategy benchmark run.

A `Problem` is one question with what each strategy needs around it: the prompt in each answer style,
how answers compare (for voting), how Tree of Thoughts searches it, and, for a task instance, how to grade
an answer. Task instances come from the verifiable task suite (`pocketchat.tasks`) or the search puzzles
(`pocketchat.tasks.game24`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pocketchat.engine.calculator import CALCULATOR
from pocketchat.errors import UserError
from pocketchat.strategies.consistency import self_consistency
from pocketchat.strategies.cot import INSTRUCTIONS, answer, extract_number, read_number
from pocketchat.strategies.dialogue import dialogue
from pocketchat.strategies.expert import expert_cot
from pocketchat.strategies.fewshot import few_shot
from pocketchat.strategies.llm import LLM, Result, Usage, parallel_map
from pocketchat.strategies.react import DEFAULT_TOOLS, Retriever, react, retrieval_tool
from pocketchat.strategies.reflection import reflection
from pocketchat.strategies.tot import CountdownToT, StepsToT, ToTTask, tree_of_thoughts
from pocketchat.tasks import TASKS, Example, extract_answer, get_task, prompt_messages, to_messages
from pocketchat.tasks.base import NUMBER, normalize_number
from pocketchat.tasks.game24 import EXPRESSION, PUZZLES, get_puzzle

STRATEGIES = ("direct", "cot", "sc", "reflect", "tool", "tot", "react", "expert", "dialogue")
STYLE = {"direct": "direct", "cot": "cot", "sc": "cot", "reflect": "cot", "tool": "tool"}  # the prompt each uses
SHOT_STYLE = {**STYLE, "expert": "cot", "dialogue": "direct"}  # the style of each strategy's demonstrations
TOPICS = {"number": "mathematics", "spelling": "spelling", "list": "sorting"}  # the expert's field, by answer kind


@dataclass
class Settings:
    """The knobs of every strategy, with `pocketchat ask`'s defaults."""

    n: int = 5  # self-consistency samples
    temperature: float = 0.7  # for the strategies that sample (sc, tot); the others decode greedily
    max_tokens: int = 256  # per completion
    rounds: int = 2  # reflection: checks (and retries) after the first answer
    breadth: int = 3  # ToT
    depth: int | None = None  # ToT; None: the task's (puzzles: numbers - 1; free questions: 4)
    generator: str = "propose"
    n_generate: int = 3
    evaluator: str = "value"
    n_evaluate: int = 3
    selection: str = "greedy"
    max_steps: int = 6  # ReAct
    plan: bool = False
    retriever: Retriever | None = None  # gives ReAct a `search` tool
    shots: int = 0  # few-shot demonstrations from the task's train split (direct, cot, sc, reflect, tool)
    seed: int = 0


@dataclass
class Problem:
    question: str
    prompt: Callable[[str], list[dict]]  # style -> the user turn
    tot: ToTTask
    normalize: Callable[[str], str] = normalize_number
    grade: Callable[[str | None], bool] | None = None  # known answers only
    reference: Callable[[str], list[dict]] | None = field(default=None, repr=False)  # style -> a solved exchange
    extract: Callable[[str], str | None] = extract_answer  # a completion's answer (direct, cot, sc, reflect, tool)
    topic: str = "mathematics"  # what the expert strategy's assistant is an expert in


def question_problem(question: str) -> Problem:
    return Problem(question, lambda style: [{"role": "user", "content": f"{question} {INSTRUCTIONS[style]}"}],
                   StepsToT(question))


def _task_problem(example: Example) -> Problem:
    """A task instance. Number answers are read leniently ("The answer is 118." gives 118, see
    `read_number`), in grading too: ToT's and ReAct's answers are free text."""
    kind = get_task(example.task).kind
    read = read_number if kind is NUMBER else (lambda a: a)
    return Problem(example.question, lambda style: prompt_messages(example, style), StepsToT(example.question),
                   kind.normalize,
                   lambda a: a is not None and kind.normalize(read(a)) == kind.normalize(example.answer),
                   lambda style: to_messages(example, style),
                   extract_number if kind is NUMBER else extract_answer, TOPICS[kind.name])


def _puzzle_problem(example: Example) -> Problem:
    puzzle = get_puzzle(example.task)
    numbers, target = puzzle.puzzle(example)
    instructions = {**INSTRUCTIONS, "direct": EXPRESSION.instruction}

    def prompt(style: str) -> list[dict]:
        return [{"role": "user", "content": f"{example.question} {instructions[style]}"}]

    def reference(style: str) -> list[dict]:
        final = "\n".join([*example.steps, f"Answer: {example.answer}"]) if style == "cot" else example.answer
        if style != "tool":
            return [*prompt(style), {"role": "assistant", "content": final}]
        turns = prompt(style)
        for call in example.calls:
            turns += [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                          "name": "calculator", "arguments": {"expression": call.expression}}}]},
                      {"role": "tool", "name": "calculator", "content": call.result}]
        return [*turns, {"role": "assistant", "content": f"Answer: {example.answer}"}]

    return Problem(example.question, prompt, CountdownToT(numbers, target, puzzle.ops), EXPRESSION.normalize,
                   lambda a: puzzle.correct(example, a), reference)


def task_problems(name: str, split: str, n: int, seed: int = 0) -> list[Problem]:
    """n instances of a task or a puzzle, as problems that grade their answers."""
    if name in PUZZLES:
        return [_puzzle_problem(e) for e in get_puzzle(name).generate(split, n, seed)]
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (valid: {', '.join([*TASKS, *PUZZLES])})")
    return [_task_problem(e) for e in get_task(name).generate(split, n, seed)]


def demonstrations(name: str, style: str, k: int, seed: int = 0) -> list[list[dict]]:
    """k solved train-split instances of a task in `style`, for few-shot prompts."""
    return [p.reference(style) for p in task_problems(name, "train", k, seed)] if k else []


def solve(llm: LLM, strategy: str, problem: Problem, settings: Settings | None = None,
          shots: list[list[dict]] = ()) -> Result:
    """Run one strategy on one problem. `shots` (solved exchanges in the strategy's style) go first."""
    s = settings or Settings()
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r} (valid: {', '.join(STRATEGIES)})")
    if strategy == "expert":
        return expert_cot(llm, problem.question, problem.topic, shots=shots, max_tokens=s.max_tokens, seed=s.seed,
                          extract=problem.extract)
    if strategy == "dialogue":  # asks for the answer's shape, as the direct style does
        return dialogue(llm, problem.prompt("direct")[0]["content"], shots=shots, max_tokens=s.max_tokens,
                        seed=s.seed, extract=problem.extract)
    if strategy in STYLE:
        messages = few_shot(shots, problem.prompt(STYLE[strategy]))
        if strategy == "sc":
            return self_consistency(llm, messages, n=s.n, temperature=s.temperature, max_tokens=s.max_tokens,
                                    seed=s.seed, extract=problem.extract, normalize=problem.normalize)
        if strategy == "reflect":
            return reflection(llm, messages, rounds=s.rounds, max_tokens=s.max_tokens, seed=s.seed,
                              extract=problem.extract)
        tools = [CALCULATOR] if strategy == "tool" else None
        return answer(llm, messages, max_tokens=s.max_tokens, tools=tools, seed=s.seed, extract=problem.extract)
    if strategy == "tot":
        return tree_of_thoughts(llm, problem.tot, breadth=s.breadth, depth=s.depth, generator=s.generator,
                                n_generate=s.n_generate, evaluator=s.evaluator, n_evaluate=s.n_evaluate,
                                selection=s.selection, temperature=s.temperature, max_tokens=s.max_tokens,
                                seed=s.seed)
    tools = [*DEFAULT_TOOLS, *([retrieval_tool(s.retriever)] if s.retriever is not None else [])]
    question = problem.prompt("direct")[0]["content"]  # asks for the answer's shape ("just the number")
    return react(llm, question, tools=tools, max_steps=s.max_steps, plan=s.plan, max_tokens=s.max_tokens,
                 seed=s.seed)


def solve_all(llm: LLM, strategy: str, problems: Sequence[Problem], settings: Settings | None = None,
              shots: list[list[dict]] = (), workers: int = 1, max_batch: int | None = None) -> list[Result]:
    """`solve` on every problem, `workers` problems at a time (their model calls batched together);
    results in problem order. Each problem's calls carry its own seeds, so the answers don't depend on
    `workers` (up to the float rounding of a different batch)."""
    return parallel_map(llm, lambda p: solve(llm, strategy, p, settings, shots), problems, workers, max_batch)


def evaluate(llm: LLM, strategy: str, task: str, n: int, settings: Settings | None = None, seed: int = 0,
             workers: int = 1) -> dict:
    """Accuracy and mean tokens per instance of one strategy on n held-out instances of a task."""
    settings = settings or Settings()
    if n < 1:
        raise UserError(f"evaluate: n must be >= 1, got {n}")
    problems = task_problems(task, "test", n, seed)
    shots = demonstrations(task, SHOT_STYLE[strategy], settings.shots, seed) if strategy in SHOT_STYLE else []
    results = solve_all(llm, strategy, problems, settings, shots, workers)
    return summarize(task, strategy, problems, results)


def summarize(task: str, strategy: str, problems: Sequence[Problem], results: Sequence[Result]) -> dict:
    """evaluate's record: accuracy, and tokens (prompt + generated), generated tokens and calls per instance."""
    usage = Usage()
    for r in results:
        usage.prompt_tokens += r.usage.prompt_tokens
        usage.completion_tokens += r.usage.completion_tokens
        usage.calls += r.usage.calls
    n = len(problems)
    correct = [bool(p.grade(r.answer)) for p, r in zip(problems, results)]
    return {"task": task, "strategy": strategy, "n": n, "accuracy": sum(correct) / n, "tokens": usage.total / n,
            "completion_tokens": usage.completion_tokens / n, "calls": usage.calls / n, "correct": correct}


# -- a compact trace for the terminal ------------------------------------------------------------------------

def _short(text: str | None, width: int = 100, tail: bool = False) -> str:
    """One line of at most `width` characters: the start of the text, or with tail=True its end."""
    text = " ".join((text or "").split())
    if len(text) <= width:
        return text
    return "..." + text[3 - width:] if tail else text[: width - 3] + "..."


def format_trace(strategy: str, result: Result) -> str:
    t, lines = result.trace, []
    if strategy in ("direct", "cot", "tool", "expert", "dialogue"):
        lines.append(f"text: {_short(t['text'], 300)}")
        lines += [f"tool: {c['name']}({_short(c['arguments'], 60)}) -> {_short(c['output'], 60)}" for c in t.get("tool_calls", [])]
    elif strategy == "sc":
        votes = ", ".join(f"{a!r} x{c} ({t['shares'][a]:.0%})" for a, c in t["votes"].items())
        abstained = sum(s["answer"] is None for s in t["samples"])
        lines.append(f"votes: {votes or 'none'}" + (f"; {abstained} abstained" if abstained else ""))
    elif strategy == "reflect":
        for i, a in enumerate(t["attempts"], 1):
            verdict = {None: "", True: " -> accepted", False: f" -> rejected: {_short(a['feedback'], 80)}"}[a["accepted"]]
            lines.append(f"attempt {i}: {a['answer']!r}{verdict}")
    elif strategy == "tot":
        for node in t["nodes"][1:]:
            mark = "*" if node["selected"] else " "
            value = "-" if node["value"] is None else f"{node['value']:.3g}"
            lines.append(f"{mark} depth {node['depth']} [{value}] {_short(node['state'], 90, tail=True)}")
        lines.append(f"evaluations: {t['evaluations']}, cache hits: {t['cache_hits']}")
    else:
        if t["plan"]:
            lines.append("plan: " + " / ".join(t["plan"]))
        for i, step in enumerate(t["steps"], 1):
            lines.append(f"step {i}: {_short(step['text'], 120)}")
            if step["observation"] is not None:
                lines.append(f"  observation: {_short(step['observation'], 100)}")
        lines.append(f"stopped: {t['stopped']}")
    return "\n".join(lines)
