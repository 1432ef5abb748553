"""Strategies: each one's control flow with a scripted model; then all of them on a tiny real model through
LocalLLM, the `ask` command, and the endpoint backend against a live pocketchat server."""

from __future__ import annotations

import re

import pytest
import torch

from pocketchat.chat_format import render_prompt, tool_turn_renderer
from pocketchat.cli import main
from pocketchat.engine import Engine, SamplingParams
from pocketchat.engine.calculator import CALCULATOR
from pocketchat.engine.sandbox import PYTHON
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig
from pocketchat.strategies import (CountdownToT, LocalLLM, OpenAILLM, StepsToT, answer, ask, few_shot, react,
                                   reflection, retrieval_tool, self_consistency, tree_of_thoughts)
from pocketchat.strategies.llm import ChatBackend, _Raw
from pocketchat.strategies.react import Action, parse_reply
from pocketchat.strategies.consistency import tally, vote
from pocketchat.strategies.cot import extract_number, read_number
from pocketchat.strategies.dialogue import EXCHANGES, HEADER, dialogue_document
from pocketchat.strategies.expert import EXPERT_INSTRUCTION
from pocketchat.strategies.llm import parallel_map
from pocketchat.strategies.run import (STRATEGIES, Settings, evaluate, format_trace, question_problem, solve, solve_all,
                                       task_problems)
from pocketchat.strategies.tot import parse_value, parse_vote
from pocketchat.tokenizer import Tokenizer


class Scripted(ChatBackend):
    """A model whose replies a test writes: reply(messages, n, seed) -> texts, or (text, [(tool, json args)]).

    Every call is logged; every prompt costs 10 tokens and every reply 3, so token counts are exact."""

    def __init__(self, reply):
        self.reply, self.log = reply, []

    def _sample(self, messages, n, temperature, max_tokens, stop, seed, tools):
        self.log.append({"messages": messages if isinstance(messages, str) else list(messages), "n": n, "temperature": temperature, "stop": stop, "seed": seed,
                         "tools": tools})
        out = []
        for i, r in enumerate(self.reply(messages, n, seed)):
            text, calls = (r, []) if isinstance(r, str) else r
            out.append(_Raw(text, calls, 3, 10 if i == 0 else 0, "stop"))
        return out

    def _sample_text(self, prompt, n, temperature, max_tokens, stop, seed):  # reply() gets the document
        return self._sample(prompt, n, temperature, max_tokens, stop, seed, None)


def replies(*texts):
    """A model that says these texts, one call after another (each call gets n copies)."""
    queue = list(texts)
    return Scripted(lambda messages, n, seed: [queue.pop(0)] * n)


def last_user(messages) -> str:
    return messages[-1]["content"]


# ---- the LLM interface --------------------------------------------------------------------------------------

def test_tool_loop_runs_calls_appends_turns_and_counts_every_round():
    def reply(messages, n, seed):
        if messages[-1]["role"] == "user":
            return [("Let me compute.", [("calculator", '{"expression": "37*12"}'), ("nope", "{}")])]
        return ["Answer: 444"]

    llm = Scripted(reply)
    (g,) = llm.complete([{"role": "user", "content": "37*12?"}], tools=[CALCULATOR])
    assert g.text == "Answer: 444" and g.finish_reason == "stop"
    assert [(c.name, c.output) for c in g.tool_calls] == [("calculator", "444"), ("nope", "Error: unknown tool 'nope' (available: calculator)")]
    assert (g.tokens, g.prompt_tokens) == (6, 20)  # two rounds, each a prompt and a reply
    second = llm.log[1]["messages"]
    assert second[1]["role"] == "assistant" and second[1]["content"] == "Let me compute."
    assert [c["function"]["name"] for c in second[1]["tool_calls"]] == ["calculator", "nope"]
    assert second[2] == {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "444"}
    assert llm.log[0]["tools"][0]["function"]["name"] == "calculator"

    forever = Scripted(lambda messages, n, seed: [("", [("calculator", '{"expression": "1+1"}')])])
    (g,) = forever.complete([{"role": "user", "content": "x"}], tools=[CALCULATOR])
    assert g.finish_reason == "tool_calls" and len(g.tool_calls) == forever.max_tool_calls == len(forever.log) - 1
    bad = Scripted(lambda messages, n, seed: [("", [("calculator", "{broken")])] if len(messages) == 1 else ["ok"])
    assert bad.complete([{"role": "user", "content": "x"}], tools=[CALCULATOR])[0].tool_calls[0].output.startswith(
        'Error: "arguments" is not valid JSON')
    with pytest.raises(UserError, match="n must be"):
        bad.complete([{"role": "user", "content": "x"}], n=0)


# ---- few-shot, CoT, self-consistency ------------------------------------------------------------------------

def test_few_shot_puts_demonstrations_after_the_system_message():
    shot = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    system = {"role": "system", "content": "Be brief."}
    question = {"role": "user", "content": "2+2?"}
    assert few_shot([shot, shot], [system, question]) == [system, *shot, *shot, question]
    assert few_shot([], [question]) == [question]


def test_cot_prompt_and_answer():
    assert ask("What is 2+3?", "cot") == [{"role": "user", "content": "What is 2+3? Think step by step."}]
    llm = replies("2+3 = 5\nAnswer: 5")
    r = answer(llm, ask("What is 2+3?", "cot"))
    assert r.answer == "5" and r.trace["text"] == "2+3 = 5\nAnswer: 5"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.calls) == (10, 3, 1)
    assert llm.log[0]["temperature"] == 0.0


def test_self_consistency_votes_on_normalised_answers():
    texts = iter(["Answer: 7", "Answer: 1,234", "no\nanswer here", "Answer: 1234.", "Answer: 7", "Answer: 1234"])
    llm = Scripted(lambda messages, n, seed: [next(texts) for _ in range(n)])
    r = self_consistency(llm, ask("q"), n=6, seed=3)
    assert r.answer == "1234"
    assert r.trace["votes"] == {"1234": 3, "7": 2} and list(r.trace["votes"]) == ["1234", "7"]
    assert r.trace["shares"] == {"1234": 0.5, "7": 2 / 6}
    assert [s["answer"] for s in r.trace["samples"]][2] is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.calls) == (10, 18, 1)  # one prompt, n replies
    assert llm.log[0]["n"] == 6 and llm.log[0]["seed"] == 3 and llm.log[0]["temperature"] == 0.7
    tie = iter(["Answer: 8", "Answer: 9", "Answer: 9", "Answer: 8"])
    assert self_consistency(Scripted(lambda m, n, s: [next(tie) for _ in range(n)]), ask("q"), n=4).answer == "8"
    assert self_consistency(replies("no\nanswer"), ask("q"), n=2).answer is None
    assert [s["tokens"] for s in r.trace["samples"]] == [3] * 6
    assert vote([s["answer"] for s in r.trace["samples"]][:2]) == ("7", {"7": 1, "1234": 1})
    assert tally(r.trace["samples"][:2]) == ("7", {"7": 1, "1234": 1})  # any prefix recounts


def test_self_consistency_ignores_chains_cut_off_before_their_answer():
    class Truncating(ChatBackend):  # replies ending in "..." ran out of tokens
        def __init__(self, texts):
            self.texts = texts

        def _sample(self, messages, n, temperature, max_tokens, stop, seed, tools):
            return [_Raw(t, [], 3, 0, "length" if t.endswith("...") else "stop") for t in self.texts[:n]]

    r = self_consistency(Truncating(["so 12 + 5 = 17 ...", "Answer: 42", "then 17 ...", "so 17 ..."]), ask("q"), n=4)
    assert r.answer == "42" and r.trace["votes"] == {"42": 1}
    assert [s["finished"] for s in r.trace["samples"]] == [False, True, False, False]
    assert self_consistency(Truncating(["so 17 ...", "then 9 ...", "17 ..."]), ask("q"), n=3,
                            extract=extract_number).answer == "17"  # all cut off: they vote after all


def test_number_answers_are_read_the_way_a_chat_model_writes_them():
    assert [read_number(a) for a in ("The answer is 118.", "118", "1,234", "118.", "39 + 63 = 146", "none", None)] == [
        "118", "118", "1,234", "118.", "146", "none", None]
    assert extract_number("The word has 2 letters.") == "2" and extract_number("steps\nAnswer: 1,234") == "1,234"
    (p,) = task_problems("add2", "test", 1)
    right = p.reference("direct")[-1]["content"]
    assert p.grade(f"The answer is {right}.") and p.grade(right) and not p.grade(f"{right}1") and not p.grade(None)
    r = solve(replies(f"The sum is {right}."), "direct", p)
    assert r.answer == right
    (s,) = task_problems("sort_list", "test", 1)  # not a number: read as before
    assert s.grade(s.reference("direct")[-1]["content"]) and not s.grade("The list is " + s.reference("direct")[-1]["content"])


# ---- reflection ------------------------------------------------------------------------------------------

def test_reflection_retries_when_the_critic_says_no_and_stops_when_it_says_yes():
    llm = replies("2+2 = 5\nAnswer: 5", "No. 2+2 is 4, not 5.", "2+2 = 4\nAnswer: 4", "Yes, it is correct.")
    r = reflection(llm, ask("What is 2+2?"), rounds=3)
    assert r.answer == "4"
    assert [(a["answer"], a["accepted"]) for a in r.trace["attempts"]] == [("5", False), ("4", True)]
    assert r.usage.calls == 4
    check = llm.log[1]["messages"]
    assert check[-2] == {"role": "assistant", "content": "2+2 = 5\nAnswer: 5"} and "yes or no" in last_user(check)
    retry = llm.log[2]["messages"]
    assert retry[:1] == ask("What is 2+2?") and "No. 2+2 is 4, not 5." in last_user(retry)


def test_reflection_gives_up_after_its_rounds_and_accepts_an_unclear_verdict():
    llm = replies("Answer: 1", "no", "Answer: 2", "no", "Answer: 3")
    r = reflection(llm, ask("q"), rounds=2)
    assert r.answer == "3" and len(r.trace["attempts"]) == 3 and r.usage.calls == 5
    assert r.trace["attempts"][-1]["accepted"] is None  # the last attempt is not checked: nothing would follow
    assert reflection(replies("Answer: 1", "Hmm, maybe."), ask("q"), rounds=2).usage.calls == 2


def test_reflection_with_a_verifier_asks_no_critic():
    llm = replies("Answer: (13 - 9) * 10", "Answer: (13 - 9) * (10 - 4)")
    verify = lambda a: None if a == "(13 - 9) * (10 - 4)" else "it does not make 24"
    r = reflection(llm, ask("24 from 4 9 10 13"), rounds=2, verify=verify)
    assert r.answer == "(13 - 9) * (10 - 4)" and r.usage.calls == 2
    assert "it does not make 24" in last_user(llm.log[1]["messages"])
    assert reflection(replies("no\nanswer", "Answer: 3"), ask("q"), rounds=1).trace["attempts"][0]["feedback"] \
        == 'No "Answer:" line was found.'


# ---- Tree of Thoughts ------------------------------------------------------------------------------------

def countdown_model(proposals: dict[str, str], values: dict[str, str]):
    """Proposals keyed by the numbers on the table, ratings keyed by the numbers being rated."""
    def reply(messages, n, seed):
        text = last_user(messages)
        if text.startswith("Numbers: "):
            return [proposals.get(re.match(r"Numbers: ([^.]*)\.", text)[1], "")] * n
        return [values[re.match(r"Can the numbers ([^?]*) make", text)[1]]] * n
    return Scripted(reply)


def test_tot_bfs_expands_prunes_caches_and_answers():
    # reach 6 from 2 5 9: only 9 - 5 + 2 (and its orders) works
    llm = countdown_model(
        {"2 5 9": "5 + 9 = 14 (left: 2 14)\n9 - 5 = 4 (left: 2 4)\n2 + 7 = 9 (left: 5 9)\n2 * 9 = 18 (left: 5 18)\n"
                  "9 - 2 = 7 (left: 5 7)",
         "2 14": "14 - 2 = 12 (left: 12)",
         "2 4": "2 + 4 = 6 (left: 6)\n4 - 2 = 2 (left: 2)"},
        {"2 14": "impossible", "2 4": "2 + 4 = 6, sure", "5 7": "likely"})
    r = tree_of_thoughts(llm, CountdownToT([2, 5, 9], 6, "+-"), breadth=2, evaluator="value", n_evaluate=2)
    assert r.answer == "2 + (9 - 5)"
    nodes = r.trace["nodes"]
    # depth 1: "2 + 7" names a 7 that is not on the table, "2 * 9" uses an operation not allowed: pruned
    assert [(n["depth"], n["step"], n["value"], n["selected"]) for n in nodes] == [
        (0, "", None, True),
        (1, "5 + 9 = 14 (left: 2 14)", 0.001, False),
        (1, "9 - 5 = 4 (left: 2 4)", 20.0, True),
        (1, "9 - 2 = 7 (left: 5 7)", 1.0, True),
        (2, "2 + 4 = 6 (left: 6)", 20.0, True),  # one number left: judged exactly, no model call
        (2, "4 - 2 = 2 (left: 2)", 0.001, True),
    ]
    assert nodes[4]["parent"] == 2 and r.trace["best"] == 4
    # calls: propose at the root, 3 ratings, propose for the 2 kept states (the one for 5 7 has no valid step)
    assert r.usage.calls == 1 + 3 + 2 and r.trace["evaluations"] == 3
    assert all(c["n"] == 2 for c in llm.log if last_user(c["messages"]).startswith("Can"))


def test_countdown_prompts_start_with_a_worked_exchange_on_another_puzzle():
    task = CountdownToT([3, 8, 12], 7, "+-")
    demo_user, demo_reply, question = task.generate_prompt(task.root(), True)
    assert demo_user["content"].startswith("Numbers: 2 8 14. Target: 7.") and demo_reply["role"] == "assistant"
    assert question == {"role": "user", "content": demo_user["content"].replace("2 8 14", "3 8 12")}
    demo = CountdownToT([2, 8, 14], 7, "+-")
    moves = task.steps(demo_reply["content"])
    assert len(moves) == 6 and all(demo.extend(demo.root(), m).steps[-1] == m for m in moves)  # every move, shown exactly
    assert len(task.steps(task.generate_prompt(task.root(), False)[1]["content"])) == 1
    value = task.value_prompt(task.root())
    assert [m["content"].splitlines()[-1] for m in value[1:4:2]] == ["sure", "impossible"]
    assert value[1]["content"].splitlines()[0] == "4 + 6 = 10" and value[-1]["content"].startswith("Can the numbers 3 8 12 make 7?")
    game24 = CountdownToT([1, 2, 3, 4], 24, "+-*/")
    assert len(game24.steps(game24.generate_prompt(game24.root(), True)[1]["content"])) == 8  # "up to 8"


def test_tot_caches_ratings_by_the_numbers_left_and_drops_repeated_steps():
    llm = countdown_model({"1 2 3 5": "1 + 2 = 3 (left: 3 3 5)\n5 - 2 = 3 (left: 1 3 3)\n2 + 1 = 3 (left: 3 3 5)\n"
                                      "1 + 2 = 3 (left: 3 3 5)\n3 * 1 = 3 (left: 2 3 5)"},
                          {"3 3 5": "likely", "1 3 3": "likely", "2 3 5": "sure"})
    r = tree_of_thoughts(llm, CountdownToT([1, 2, 3, 5], 24, "+-*/"), breadth=1, depth=1)
    nodes = r.trace["nodes"][1:]
    # "2 + 1" is another path (its own state) to the table 3 3 5: rated from the cache; the repeat is dropped
    assert [(n["step"], n["value"], n["selected"]) for n in nodes] == [
        ("1 + 2 = 3 (left: 3 3 5)", 1.0, False), ("5 - 2 = 3 (left: 1 3 3)", 1.0, False),
        ("2 + 1 = 3 (left: 3 3 5)", 1.0, False), ("3 * 1 = 3 (left: 2 3 5)", 20.0, True)]
    assert (r.trace["evaluations"], r.trace["cache_hits"]) == (3, 1)
    assert sum(last_user(c["messages"]).startswith("Can") for c in llm.log) == 3
    assert r.answer is None  # depth 1 of 3: nothing complete


def test_tot_ties_go_to_the_first_generated_state():
    llm = countdown_model({"2 4 6": "2 + 4 = 6 (left: 6 6)\n4 - 2 = 2 (left: 2 6)", "6 6": "6 + 6 = 12 (left: 12)",
                           "2 6": "2 * 6 = 12 (left: 12)"}, {"6 6": "sure", "2 6": "sure"})
    r = tree_of_thoughts(llm, CountdownToT([2, 4, 6], 12, "+-*/"), breadth=2)
    assert [n["value"] for n in r.trace["nodes"][3:]] == [20.0, 20.0]
    assert r.trace["best"] == 3 and r.answer == "6 + (2 + 4)"


def test_tot_vote_evaluator_and_sampled_selection():
    def reply(messages, n, seed):
        text = last_user(messages)
        if "best choice" in text:
            assert text.count("Choice ") == 3
            return ["I like it. The best choice is 3", "The best choice is 2.", "the best choice is 3", "no idea"][:n]
        return [f"Step {seed}-{i}" for i in range(n)]

    llm = Scripted(reply)
    task = StepsToT("What is 2+3?", depth=1)
    r = tree_of_thoughts(llm, task, breadth=1, generator="sample", n_generate=3, evaluator="vote", n_evaluate=4)
    assert [(n["step"], n["value"], n["selected"]) for n in r.trace["nodes"][1:]] == [
        ("Step 0-0", 0.0, False), ("Step 0-1", 1.0, False), ("Step 0-2", 2.0, True)]
    assert llm.log[0]["n"] == 3 and llm.log[1]["n"] == 4 and llm.log[1]["seed"] == 1  # one seed per call
    picks = []
    for seed in range(6):
        r = tree_of_thoughts(Scripted(reply), StepsToT("q", depth=1), breadth=1, generator="sample", n_generate=3,
                             evaluator="vote", n_evaluate=4, selection="sample", seed=seed)
        picks.append([n["selected"] for n in r.trace["nodes"][1:]].index(True))
        assert r == tree_of_thoughts(Scripted(reply), StepsToT("q", depth=1), breadth=1, generator="sample",
                                     n_generate=3, evaluator="vote", n_evaluate=4, selection="sample", seed=seed)
    assert 0 not in picks and set(picks) == {1, 2}  # drawn in proportion to the votes: 0 votes never win
    with pytest.raises(UserError, match="evaluator"):
        tree_of_thoughts(llm, task, evaluator="score")


def test_tot_on_a_free_question_stops_at_an_answer_line():
    def reply(messages, n, seed):
        text = last_user(messages)
        if "Steps so far" in text:
            done = text.split("Steps so far:\n")[1].split("\n\n")[0]
            return ["2+3 = 5\nAnswer: 6" if done == "(none yet)" else "Answer: 5\nAnswer: 6"]
        return ["impossible" if "Answer: 6" in text else "sure"]

    r = tree_of_thoughts(Scripted(reply), StepsToT("What is 2+3?"), breadth=1, depth=4)
    assert r.answer == "5"
    final = r.trace["nodes"][r.trace["best"]]
    assert final["state"] == "2+3 = 5 | Answer: 5" and final["depth"] == 2
    # the complete state is carried over, not expanded: levels 3 and 4 make no calls
    assert r.usage.calls == 1 + 2 + 1 + 2


def test_value_and_vote_parsing():
    assert parse_value("4 + 6 = 10, 10 * 2 = 20... likely") == 1.0
    assert parse_value("Sure? No: impossible") == 0.001 and parse_value("I think so") == 0.0
    assert parse_vote("The best choice is 2", 3) == 1 and parse_vote("best choice is 5", 3) is None
    assert parse_vote("choice 2", 3) is None


# ---- ReAct ------------------------------------------------------------------------------------------------

def test_parse_reply():
    assert parse_reply("Thought: multiply.\nAction: calculator[37*12]") == Action("calculator", "37*12")
    code = "Action: python[xs = [1, 2]\nprint(xs[0])]"
    assert parse_reply(code) == Action("python", "xs = [1, 2]\nprint(xs[0])")
    assert parse_reply("Thought: done.\nAnswer: 444") == "444"
    assert parse_reply("Answer: 444\nAction: calculator[1+1]") == "444"  # the first thing it does wins
    assert parse_reply("Action: calculator[1+1]\nAnswer: 2") == Action("calculator", "1+1")
    assert parse_reply("Action: Finish[Paris]") == "Paris"
    assert parse_reply("Thought: hmm") is None and parse_reply("Action: calculator[1+1") is None


def test_react_runs_tools_feeds_observations_and_answers():
    llm = replies("Thought: multiply.\nAction: calculator[37*12]", "Thought: check in Python.\nAction: python[print(444 + 1)]",
                  "Action: search[capital of Brenth]", "Action: oracle[anything]", "Thought: done.\nAnswer: 444")

    class Store:
        def search(self, query, k):
            return [("Brenth's capital is  Ulo.", 0.9), ("Ulo has a river.", 0.5)][:k]

    r = react(llm, "What is 37*12?", tools=[CALCULATOR, PYTHON, retrieval_tool(Store(), k=2)], demos=False)
    assert r.answer == "444" and r.trace["stopped"] == "answer"
    assert [s["observation"] for s in r.trace["steps"]] == [
        "444", "445", "[1] Brenth's capital is Ulo.\n[2] Ulo has a river.",
        "Error: unknown tool 'oracle' (available: calculator, python, search)", None]
    assert all(c["stop"] == ["Observation:"] for c in llm.log)
    prompt = llm.log[0]["messages"][0]["content"]
    assert "- calculator[expression]:" in prompt and "- search[query]:" in prompt and prompt.endswith("Question: What is 37*12?")
    last = llm.log[-1]["messages"]
    assert last[1:3] == [{"role": "assistant", "content": "Thought: multiply.\nAction: calculator[37*12]"},
                         {"role": "user", "content": "Observation: 444"}]
    assert len(last) == 1 + 2 * 4


def test_react_step_limit_and_planner():
    llm = replies("1. Find the numbers.\n2. Add them.\nsome chatter", "I am not sure.", "Still thinking.")
    r = react(llm, "What is 2+3?", max_steps=2, plan=True)
    assert r.answer is None and r.trace["stopped"] == "step limit" and r.usage.calls == 3
    assert r.trace["plan"] == ["Find the numbers.", "Add them."]
    assert llm.log[1]["messages"][-1]["content"] == "Plan:\n1. Find the numbers.\n2. Add them.\n\nQuestion: What is 2+3?"
    assert r.trace["steps"][0]["observation"].startswith("Error: write an Action line")
    with pytest.raises(UserError, match="one required argument"):
        react(llm, "q", tools=[CALCULATOR.__class__("t", "d", {"type": "object", "properties": {}}, lambda: "")])


def test_react_starts_with_solved_exchanges_for_the_tools_it_has():
    llm = replies("Action: calculator[88+30]", "Answer: 118")
    r = react(llm, "Add 88 and 30.")
    assert r.answer == "118" and r.trace["steps"][0]["observation"] == "118"
    first = llm.log[0]["messages"]
    assert first[0]["content"].startswith("Answer the question.") and first[0]["content"].endswith("Question: How much is 45 plus 27?")
    assert "- python[code]:" in first[0]["content"]  # every tool is listed, demonstrated or not
    assert first[1] == {"role": "assistant", "content": "Thought: I need 45 plus 27.\nAction: calculator[45+27]"}
    assert first[-1] == {"role": "user", "content": "Question: Add 88 and 30."}
    assert sum(m["role"] == "assistant" for m in first) == 2 + 3  # two solved questions: 1 and 2 calls, 2 answers
    for m in first:  # a demonstration's observations are what the calculator really says
        if m["role"] == "assistant" and "Action:" in m["content"]:
            action = parse_reply(m["content"])
            assert first[first.index(m) + 1]["content"] == f"Observation: {CALCULATOR.run({'expression': action.input})}"
    assert llm.log[1]["messages"][:len(first)] == first
    no_calculator = replies("Answer: 5")
    react(no_calculator, "q", tools=[PYTHON])
    assert len(no_calculator.log[0]["messages"]) == 1  # no demonstration for python: the one-turn prompt


# ---- running strategies on problems ---------------------------------------------------------------------------

def test_evaluate_grades_puzzles_exactly_and_counts_tokens():
    problems = task_problems("game24", "test", 4, seed=0)
    solutions = {p.question: p.reference("direct")[-1]["content"] for p in problems}
    flip = iter([True, False, True, False])

    def reply(messages, n, seed):
        q = messages[-1]["content"].split(" Think step by step.")[0]
        return [f"Answer: {solutions[q]}" if next(flip) else "Answer: 24"]

    r = evaluate(Scripted(reply), "cot", "game24", 4, Settings(seed=0))
    assert r == {"task": "game24", "strategy": "cot", "n": 4, "accuracy": 0.5, "tokens": 13.0,
                 "completion_tokens": 3.0, "calls": 1.0, "correct": [True, False, True, False]}
    shot_llm = replies(*["Answer: 1"] * 2)
    r = evaluate(shot_llm, "direct", "add2", 2, Settings(shots=2))
    messages = shot_llm.log[0]["messages"]
    assert len(messages) == 5 and messages[-1]["content"].endswith("Answer with just the number.")
    assert messages[1]["role"] == "assistant" and re.fullmatch(r"\d+", messages[1]["content"])
    with pytest.raises(UserError, match="unknown task"):
        evaluate(shot_llm, "cot", "add3", 2)
    with pytest.raises(UserError, match="unknown strategy"):
        solve(shot_llm, "magic", question_problem("q"))


def test_expert_strategy_asks_an_expert_for_a_careful_answer_and_reads_it():
    model = replies("Carrying the one: 37+45 = 82.\nAnswer: 82")
    problem = task_problems("add2", "test", 1)[0]
    r = solve(model, "expert", problem, Settings(max_tokens=50))
    (call,) = model.log
    system, user = call["messages"]
    assert system == {"role": "system", "content": "You are a leading expert in mathematics. You work carefully and "
                                                   "your answers are always right."}
    assert user["content"] == f"{problem.question} {EXPERT_INSTRUCTION}" and call["temperature"] == 0.0
    assert r.answer == "82" and format_trace("expert", r).startswith("text: Carrying")
    letters = task_problems("spell", "test", 1)[0]
    solve(model := replies("3"), "expert", letters, Settings(), shots=[[{"role": "user", "content": "q"},
                                                                         {"role": "assistant", "content": "a"}]])
    assert "expert in spelling" in model.log[0]["messages"][0]["content"]
    assert [m["role"] for m in model.log[0]["messages"]] == ["system", "user", "assistant", "user"]  # shots after it


def test_dialogue_strategy_continues_a_helpful_transcript_and_stops_at_the_next_user_turn():
    problem = task_problems("add2", "test", 1)[0]
    a, b = problem.question.removeprefix("Add ").removesuffix(".").split(" and ")
    model = replies(f" {a} + {b} = {int(a) + int(b)}")
    r = solve(model, "dialogue", problem, Settings(max_tokens=20))
    (call,) = model.log
    document, question = call["messages"], problem.prompt("direct")[0]["content"]
    assert document == dialogue_document(question) and isinstance(document, str)
    assert document.startswith(HEADER) and document.endswith(f"\n\nUser: {question}\nAssistant:")
    assert all(f"User: {q}\nAssistant: {a}" in document for q, a in EXCHANGES)
    assert call["stop"] == ["\nUser:"] and r.answer == str(int(a) + int(b)) and problem.grade(r.answer)
    model = replies("9")
    evaluate(model, "dialogue", "add2", 1, Settings(shots=2))
    shots = task_problems("add2", "train", 2)
    document = model.log[0]["messages"]
    assert all(f"User: {p.prompt('direct')[0]['content']}\nAssistant: {p.reference('direct')[-1]['content']}\n"
               in document for p in shots)  # few-shot: solved train instances as the exchanges
    assert not any(q in document for q, _ in EXCHANGES)


# ---- a tiny real model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    texts = ["What is 12 + 30? Think step by step. 2+0 = 2, 1+3 = 4. Answer: 42"] * 20 + ["Use the calculator."] * 5
    tok = Tokenizer.train(texts, vocab_size=300)
    torch.manual_seed(0)
    CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)).save_pretrained(folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def local(tiny):
    tok = Tokenizer.load(tiny)
    return LocalLLM(Engine(CausalLM.from_pretrained(tiny).eval(), tok, tool_turn=tool_turn_renderer(tok)))


def test_local_llm_samples_repeatably_and_counts_tokens(local):
    messages = ask("What is 12 + 30?")
    prompt = render_prompt(local.engine.tokenizer, messages)
    gens = local.complete(messages, n=3, temperature=1.0, max_tokens=12, seed=5)
    assert gens == local.complete(messages, n=3, temperature=1.0, max_tokens=12, seed=5)
    assert len({g.text for g in gens}) > 1
    assert [g.prompt_tokens for g in gens] == [len(prompt), 0, 0]
    reference = local.engine.generate([prompt], SamplingParams(temperature=1.0, max_tokens=12, seed=6))[0]
    assert (gens[1].text, gens[1].tokens) == (reference.text, len(reference.token_ids))  # sample i: seed + i
    greedy = local.complete(messages, n=2, max_tokens=12)
    assert greedy[0].text == greedy[1].text


def test_batched_local_llm_shares_one_batch_and_gives_the_same_completions(local):
    calls = []
    generate = local.engine.generate
    local.engine.generate = lambda prompts, params: calls.append(len(prompts)) or generate(prompts, params)
    try:
        r = self_consistency(local, ask("What is 12 + 30?"), n=5, max_tokens=8, seed=2)
        assert calls == [5]  # the k samples are one engine batch, not k calls
    finally:
        local.engine.generate = generate
    questions = [ask(f"What is {a} + {b}?") for a, b in ((12, 30), (7, 5), (40, 2), (3, 3))]

    def run(messages):
        return [(g.text, g.tokens, g.prompt_tokens) for g in
                local.complete(messages, n=3, temperature=1.0, max_tokens=10, seed=7) + local.complete(messages, max_tokens=10)]

    alone = [run(m) for m in questions]
    assert parallel_map(local, run, questions, workers=4) == alone  # seeds per call: batching changes nothing
    with local.batched(max_batch=3):
        assert local._batcher is not None and parallel_map(local, run, questions, workers=4) == alone  # reused
    assert local._batcher is None
    problems = task_problems("reach", "test", 3)
    settings = Settings(n=2, max_tokens=8, breadth=2, n_evaluate=1)
    for strategy in ("sc", "tot"):
        together = solve_all(local, strategy, problems, settings, workers=3)
        assert [(x.answer, x.usage) for x in together] == [(x.answer, x.usage) for x in solve_all(local, strategy, problems, settings)]
    assert r.usage.calls == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_on_a_tiny_model(local, strategy):
    settings = Settings(n=2, max_tokens=8, rounds=1, breadth=2, depth=2, n_evaluate=1, max_steps=2)
    for problem in (question_problem("What is 12 + 30?"), task_problems("reach", "test", 1)[0]):
        r = solve(local, strategy, problem, settings)
        assert r.answer is None or isinstance(r.answer, str)
        assert r.usage.calls >= 1 and r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 20
        assert format_trace(strategy, r)


def test_ask_command(tiny, capsys):
    assert main(["ask", "--model", str(tiny), "--strategy", "sc", "--n", "3", "--max-tokens", "6", "What is 12 + 30?"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^votes: ", out, re.M) and re.search(r"^tokens: \d+ \(\d+ prompt \+ \d+ generated\) in 1 calls$", out, re.M)
    assert re.search(r"^answer: ", out, re.M)
    assert main(["ask", "--model", str(tiny), "--strategy", "cot", "--task", "reach", "--n-eval", "2", "--max-tokens", "4"]) == 0
    assert re.search(r"cot on 2 held-out reach instances: accuracy \d+\.\d%, \d+ tokens per instance", capsys.readouterr().out)
    for strategy in ("expert", "dialogue"):
        assert main(["ask", "--model", str(tiny), "--strategy", strategy, "--max-tokens", "4", "What is 12 + 30?"]) == 0
        assert re.search(r"^text: .*\n.*in 1 calls\nanswer: ", capsys.readouterr().out, re.M)
        assert main(["ask", "--model", str(tiny), "--strategy", strategy, "--task", "add2", "--shots", "1", "--n-eval", "2",
                     "--max-tokens", "4"]) == 0
        assert f"{strategy} on 2 held-out add2 instances: accuracy" in capsys.readouterr().out
    assert main(["ask", "--model", str(tiny)]) == 2
    assert "give a QUESTION" in capsys.readouterr().err
    assert main(["ask", "--model", str(tiny), "--strategy", "cot", "--shots", "2", "q"]) == 2
    assert main(["ask", "--model", str(tiny), "--strategy", "tot", "--generator", "dfs", "q"]) == 2
    assert "generator must be one of sample, propose" in capsys.readouterr().err


# ---- the endpoint backend against a live pocketchat server ---------------------------------------------------

def test_openai_backend_matches_the_local_engine_through_a_live_server(local):
    from pocketchat.serve.app import create_app
    from test_serve import running

    engine = local.engine
    with running(create_app(Engine(engine.model, engine.tokenizer, tool_turn=engine.tool_turn), "tiny", max_batch=4)) as url:
        remote = OpenAILLM(url)  # a bare host:port gets /v1, the model is the one the server lists
        assert remote.base_url == url + "/v1" and remote.model == "tiny"
        messages = ask("What is 12 + 30?")
        mine, theirs = local.complete(messages, max_tokens=10), remote.complete(messages, max_tokens=10)
        assert theirs == mine  # greedy: same text, same token counts, same finish reason
        sampled = remote.complete(messages, n=3, temperature=1.0, max_tokens=10, seed=1)
        assert len(sampled) == 3 and sum(g.tokens for g in sampled) == sum(
            g.tokens for g in local.complete(messages, n=3, temperature=1.0, max_tokens=10, seed=1))
        r = solve(remote, "sc", question_problem("What is 12 + 30?"), Settings(n=2, max_tokens=6))
        assert r.usage.calls == 1 and r.usage.prompt_tokens == mine[0].prompt_tokens
        document = dialogue_document("What is 12 + 30?")  # plain text through /v1/completions
        assert remote.complete_text(document, max_tokens=10) == local.complete_text(document, max_tokens=10)
        sampled = remote.complete_text(document, n=2, temperature=1.0, max_tokens=6, seed=3)
        assert [g.text for g in sampled] == [g.text for g in local.complete_text(document, n=2, temperature=1.0,
                                                                                 max_tokens=6, seed=3)]
        problem = task_problems("add2", "test", 1)[0]
        for strategy in ("dialogue", "expert"):
            assert solve(remote, strategy, problem).trace == solve(local, strategy, problem).trace
        with pytest.raises(UserError, match="answered 404"):
            OpenAILLM(url + "/nowhere/v1", model="tiny").complete(messages)
    with pytest.raises(UserError, match="cannot reach"):
        OpenAILLM(url, model="tiny").complete(messages, max_tokens=2)
    with pytest.raises(UserError, match="must be a URL"):
        OpenAILLM("localhost", model="tiny")
