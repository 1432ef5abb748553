"""The verifiable tasks: determinism, split disjointness, correct answers, renderings, grading."""

import collections
import json
import operator
import re

import pytest

from pocketchat.chat_format import validate
from pocketchat.engine.calculator import calculate
from pocketchat.errors import UserError
from pocketchat.tasks import (STYLES, TASKS, Example, check, extract_answer, format_ok, get_task, mixture,
                              prompt_messages, score, split_of, to_messages)
from pocketchat.tasks.letters import WORDS
from pocketchat.tasks.word_problems import TEMPLATES

ALL = list(TASKS)


def engine_text(messages: list[dict]) -> str:
    """What the engine's completion text would be for a reference conversation: everything after the
    prompt, with tool calls in ChatML tags and the forced tool turns in between."""
    out = []
    for m in messages[1:]:
        if m["role"] == "assistant":
            out.append(m["content"])
            for call in m.get("tool_calls", []):
                fn = call["function"]
                out.append(f'<tool_call>{{"name": "{fn["name"]}", "arguments": {fn["arguments"]}}}</tool_call>')
        else:
            out.append(f"<|im_end|>\n<|im_start|>tool\n{m['content']}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(out)


def wrong_answer(example: Example) -> str:
    kind = get_task(example.task).kind.name
    if kind == "number":
        return str(int(example.answer) + 1)
    if kind == "spelling":
        return example.answer[:-2]  # last letter dropped
    return ", ".join(reversed(example.answer.split(", ")))  # items are distinct, so the order changes


def sample(name: str, n: int = 200) -> list[Example]:
    task = get_task(name)
    return task.generate("train", n, seed=5) + task.generate("test", n, seed=5)


# -- generation and splits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_generate_is_deterministic_per_seed(name):
    task = get_task(name)
    first = task.generate("train", 50, seed=3)
    assert first == task.generate("train", 50, seed=3)
    assert first != task.generate("train", 50, seed=4)
    assert len(first) == 50 and all(e.task == name for e in first)


@pytest.mark.parametrize("name", ALL)
def test_train_and_test_are_disjoint(name):
    task = get_task(name)
    train, test = task.generate("train", 2000, seed=0), task.generate("test", 1000, seed=1)
    assert all(split_of(e.key) == "train" for e in train) and all(split_of(e.key) == "test" for e in test)
    assert {e.key for e in train}.isdisjoint(e.key for e in test)
    assert {e.question for e in train}.isdisjoint(e.question for e in test)


def test_tasks_sharing_instances_share_the_split():
    # a held-out 2-digit sum is held out of `add` too, and a held-out word out of both letter tasks
    assert {e.key for e in get_task("add").generate("train", 3000, 0)}.isdisjoint(
        e.key for e in get_task("add2").generate("test", 500, 0))
    assert {e.key for e in get_task("spell").generate("train", 500, 0)}.isdisjoint(
        e.key for e in get_task("count_letters").generate("test", 500, 0))
    # b+a is the same instance as a+b
    for e in get_task("add2").generate("test", 300, 0):
        assert e.key == "arith:{}+{}".format(*sorted(map(int, re.findall(r"\d+", e.question))))


def test_split_holds_out_a_fifth_of_the_space():
    keys = [f"arith:{a}+{b}" for a in range(10, 100) for b in range(a, 100)]
    share = sum(split_of(k) == "test" for k in keys) / len(keys)
    assert 0.18 < share < 0.22


def test_questions_do_not_repeat_while_the_split_has_new_ones():
    examples = get_task("add").generate("test", 500, seed=0)
    assert len({e.question for e in examples}) == 500
    # the test words are fewer than 500: the split is exhausted, then repeats fill the request
    spell = get_task("spell").generate("test", 500, seed=0)
    words = {e.key for e in spell}
    assert len(spell) == 500 and 40 < len(words) < 0.3 * len(WORDS)


def test_bad_arguments_raise_user_errors():
    with pytest.raises(UserError, match="add2"):
        get_task("addition")
    with pytest.raises(UserError, match="split"):
        get_task("add").generate("validation", 3, 0)
    with pytest.raises(UserError, match="style"):
        to_messages(get_task("add").generate("train", 1, 0)[0], "chain")
    with pytest.raises(UserError, match="style"):
        mixture("train", 1, 0, styles=("direct", "verbose"))


# -- answers are right --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,op,digits_a,digits_b", [
    ("add", operator.add, (2, 4), (2, 4)), ("add2", operator.add, (2, 2), (2, 2)),
    ("sub", operator.sub, (2, 4), (2, 4)), ("mul", operator.mul, (2, 3), (1, 2)),
])
def test_arithmetic_answers_are_correct(name, op, digits_a, digits_b):
    for e in sample(name):
        a, b = map(int, re.findall(r"\d+", e.question))
        if e.question.startswith("Subtract"):  # "Subtract b from a"
            a, b = b, a
        assert e.answer == str(op(a, b))
        if name == "sub":  # operands are swapped when needed, so the answer is never negative
            assert a >= b
            a, b = sorted((a, b))
        assert digits_a[0] <= len(str(a)) <= digits_a[1] and digits_b[0] <= len(str(b)) <= digits_b[1]


@pytest.mark.parametrize("name,sign", [("add", "+"), ("add2", "+"), ("sub", "-")])
def test_column_steps_compute_the_answer(name, sign):
    for e in sample(name):
        values = []
        for i, step in enumerate(e.steps):
            expression, rest = step.split(" = ")
            value = int(rest.split(",")[0])
            assert calculate(expression) == str(value)
            values.append(value)
            carried = step.endswith(("carry 1", "borrow 1"))
            if i + 1 < len(e.steps):  # a carry or borrow shows up as a third term in the next column
                assert carried == (e.steps[i + 1].split(" = ")[0].count(sign) == 2)
            else:
                assert not carried
        # the last column's result, then every other column's ones digit, read upwards
        assert int(str(values[-1]) + "".join(str(v % 10) for v in reversed(values[:-1]))) == int(e.answer)


def test_multiplication_steps_sum_partial_products():
    for e in sample("mul"):
        for step in e.steps:
            expression, value = step.split(" = ")
            assert calculate(expression) == value
        assert e.steps[-1].split(" = ")[1] == e.answer
        a, b = map(int, e.calls[0].expression.split("*"))
        products = [step.split(" = ")[0].split("*") for step in e.steps if "*" in step]
        parts = [int(part) for part, _ in products]
        assert sum(parts) == a and all(factor == str(b) for _, factor in products)
        assert all(len(str(part).rstrip("0")) == 1 for part in parts)  # one digit of a at its place value
        assert len(e.steps) == len(parts) + (len(parts) > 1)  # and a final sum when there is more than one


def test_word_problem_steps_are_consistent_with_question_and_answer():
    seen_templates = set()
    for e in sample("word"):
        seen_templates.add(e.key.split(":")[1])
        known = set(map(int, re.findall(r"\d+", e.question))) | {2, 12}  # "both get older", "a dozen"
        values = []
        assert 2 <= len(e.steps) <= 4
        for step in e.steps:
            m = re.fullmatch(r"[^:]+: (\d+)([-+*/])(\d+) = (\d+)", step)
            assert m, step
            a, b, value = int(m[1]), int(m[3]), int(m[4])
            assert calculate(f"{a}{m[2]}{b}") == str(value) and value >= 0
            assert {a, b} <= known | set(values), f"{step!r}: operand from nowhere in {e.question!r}"
            values.append(value)
        assert str(values[-1]) == e.answer
        assert [(c.expression, c.result) for c in e.calls] == [
            (s.split(": ")[1].split(" = ")[0], s.split(" = ")[1]) for s in e.steps]
    assert seen_templates == set(TEMPLATES)


def test_letter_tasks_answers():
    assert len(WORDS) >= 300 and len(set(WORDS)) == len(WORDS)
    assert all(re.fullmatch(r"[a-z]+", w) for w in WORDS)
    zeros = 0
    for e in sample("count_letters"):
        letter, word = re.findall(r'"(\w+)"', e.question)
        assert e.answer == str(word.count(letter))
        zeros += e.answer == "0"
        (step,) = e.steps
        if e.answer == "0":
            assert step == f"{'-'.join(word)} has no {letter}"
        else:  # a running tally on the spelled word, ending at the count
            assert re.findall(rf"{letter}\((\d+)\)", step) == [str(i) for i in range(1, int(e.answer) + 1)]
            assert re.sub(r"\(\d+\)", "", step) == "-".join(word)
    assert zeros > 0
    for e in sample("spell"):
        (word,) = re.findall(r'"(\w+)"', e.question)
        assert e.answer == "-".join(word) and word in WORDS


@pytest.mark.parametrize("name", ["sort_list", "reverse_list"])
def test_list_answers(name):
    kinds = set()
    for e in sample(name):
        items = e.question.split(": ", 1)[1].removesuffix(".").split(", ")
        numeric = items[0].isdigit()
        kinds.add(numeric)
        expected = sorted(items, key=int if numeric else str) if name == "sort_list" else items[::-1]
        assert e.answer == ", ".join(expected)
        assert len(set(items)) == len(items) >= 3
    assert kinds == {True, False}


UNIT_FACTORS = {  # written out independently of the task's table
    ("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("centimeters", "millimeters"): 10,
    ("kilograms", "grams"): 1000, ("liters", "milliliters"): 1000, ("feet", "inches"): 12, ("yards", "feet"): 3,
    ("weeks", "days"): 7, ("days", "hours"): 24, ("hours", "minutes"): 60, ("minutes", "seconds"): 60,
    ("years", "months"): 12, ("decades", "years"): 10, ("centuries", "years"): 100, ("dozen", "eggs"): 12,
    ("tons", "kilograms"): 1000, ("pounds", "ounces"): 16, ("gallons", "quarts"): 4, ("dollars", "cents"): 100,
    ("hours", "seconds"): 3600, ("days", "minutes"): 1440, ("weeks", "hours"): 168,
    ("kilometers", "centimeters"): 100_000,
}


def test_unit_conversions_are_correct():
    directions = set()
    for e in sample("units"):
        target, amount, source = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", e.question).groups()
        if (source, target) in UNIT_FACTORS:
            assert int(e.answer) == int(amount) * UNIT_FACTORS[source, target]
            directions.add("down")
        else:
            factor = UNIT_FACTORS[target, source]
            assert int(amount) % factor == 0 and int(e.answer) == int(amount) // factor
            directions.add("up")
        assert e.steps[-1] == f"{e.calls[-1].expression} = {e.answer}"
    assert directions == {"down", "up"}


@pytest.mark.parametrize("name", ALL)
def test_calculator_calls_evaluate_to_their_results(name):
    with_calls = name not in ("count_letters", "spell", "sort_list", "reverse_list")
    for e in sample(name, 200):
        assert bool(e.calls) == with_calls
        for call in e.calls:
            assert calculate(call.expression) == call.result
            assert re.fullmatch(r"-?\d+", call.result)  # never "12.0"
        if e.calls:
            assert e.calls[-1].result == e.answer


# -- rendering ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_reference_replies_pass_check_and_format_in_every_style(name):
    for e in get_task(name).generate("test", 30, seed=2):
        for style in STYLES:
            messages = to_messages(e, style)
            validate(messages)  # the chat format accepts it
            assert messages[:1] == prompt_messages(e, style)
            text = engine_text(messages)
            assert extract_answer(text) == e.answer
            assert check(e, text) and format_ok(e, text, style)
            wrong = wrong_answer(e)
            bad = wrong if style == "direct" else text[: text.rindex("Answer: ")] + f"Answer: {wrong}"
            assert not check(e, bad)
            assert format_ok(e, bad, style)  # a wrong answer can still be well formatted


def test_prompts_name_the_style():
    e = get_task("mul").generate("train", 1, seed=0)[0]
    prompts = {s: prompt_messages(e, s)[0]["content"] for s in STYLES}
    assert prompts["direct"] == f"{e.question} Answer with just the number."
    assert prompts["cot"] == f"{e.question} Think step by step."
    assert prompts["tool"] == f"{e.question} Use the calculator."
    assert to_messages(e, "direct")[1] == {"role": "assistant", "content": e.answer}
    assert to_messages(e, "cot")[1]["content"] == "\n".join(e.steps) + f"\nAnswer: {e.answer}"


def test_tool_style_messages():
    e = get_task("word").generate("train", 1, seed=0)[0]
    messages = to_messages(e, "tool")
    assert len(messages) == 2 + 2 * len(e.calls)
    for i, call in enumerate(e.calls):
        assistant, tool = messages[1 + 2 * i], messages[2 + 2 * i]
        assert assistant["role"] == "assistant" and assistant["content"] == call.note
        (tool_call,) = assistant["tool_calls"]
        assert tool_call["type"] == "function" and tool_call["function"]["name"] == "calculator"
        assert json.loads(tool_call["function"]["arguments"]) == {"expression": call.expression}
        assert tool == {"role": "tool", "name": "calculator", "content": calculate(call.expression)}
    assert messages[-1] == {"role": "assistant", "content": f"Answer: {e.answer}"}


def test_tool_style_without_arithmetic_is_cot():
    e = get_task("spell").generate("train", 1, seed=0)[0]
    assert to_messages(e, "tool") == to_messages(e, "cot")


# -- grading ------------------------------------------------------------------------------------------------

def _example(task: str, answer: str) -> Example:
    return Example(task=task, question="q", answer=answer, steps=["step"], calls=[], key="k")


def test_extract_answer():
    assert extract_answer("x = 3\nAnswer: 5\nAnswer: 7") == "7"
    assert extract_answer("work\nanswer:  12 ") == "12"
    assert extract_answer("  s-t-r \n") == "s-t-r"
    assert extract_answer("first 3, then 1,250\nso that is it") == "1,250"
    assert extract_answer("") is None and extract_answer("no\nnumbers") is None
    assert extract_answer("Answer:") is None


def test_check_normalises_and_is_exact():
    number = _example("add", "1234")
    for text in ("1234", "1,234", "$1234.", " Answer: 1,234 ", "steps\nAnswer: 1234."):
        assert check(number, text), text
    for text in ("1235", "12345", "1234.5", "Answer: 1234 apples", "", "1 234"):
        assert not check(number, text), text
    # a model's own words, with no "Answer:" line: its last number
    for text in ("The sum of 1000 and 234 is **1234**.", "1000 + 234 = 1,234", "Let me add.\nThe total is 1234"):
        assert check(number, text), text
    assert not check(number, "1234 is close, but the sum is 1235.")
    spelled = _example("spell", "a-p-p-l-e")
    assert check(spelled, "A-P-P-L-E") and check(spelled, "Answer: a - p - p - l - e.")
    assert not check(spelled, "a-p-l-e") and not check(spelled, "apple")
    listed = _example("sort_list", "3, 7, 12")
    assert check(listed, "[3,7,12]") and check(listed, "Answer: 3, 7 ,12.")
    assert not check(listed, "3, 12, 7") and not check(listed, "3 7 12")
    words = _example("sort_list", "apple, fig")
    assert check(words, "Apple, Fig")


def test_format_ok():
    add = _example("add", "12")
    assert format_ok(add, "12", "direct") and format_ok(add, " 99\n", "direct")
    for text in ("The answer is 12", "Answer: 12", "12\n12", ""):
        assert not format_ok(add, text, "direct"), text
    assert format_ok(add, "6+6 = 12\nAnswer: 12", "cot")
    for text in ("12", "Answer: 12", "6+6 = 12\nAnswer: 12\nDone.", "6+6 = 12\nAnswer: twelve", ""):
        assert not format_ok(add, text, "cot"), text
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6+6"}}</tool_call>'
    tool_add = get_task("add").generate("train", 1, 0)[0]
    assert format_ok(tool_add, f"{call}<|im_end|>\n<|im_start|>tool\n12<|im_end|>\n<|im_start|>assistant\nAnswer: 3",
                     "tool")
    assert not format_ok(tool_add, "6+6 = 12\nAnswer: 12", "tool")  # asked for the calculator, did not use it
    spell = _example("spell", "a-b")
    assert format_ok(spell, "a-b", "direct") and not format_ok(spell, "ab!", "direct")
    assert format_ok(spell, "2 letters\nAnswer: a-b", "tool")  # no arithmetic: tool is judged as cot


def test_direct_equation_replies_restate_one_step_arithmetic():
    add, word = get_task("add2").generate("train", 1, 0)[0], get_task("word").generate("train", 20, 0)
    a, b = add.calls[0].expression.split("+")
    reply = to_messages(add, "direct", equation=True)[-1]["content"]
    assert reply == f"{a} + {b} = {add.answer}" and to_messages(add, "direct")[-1]["content"] == add.answer
    assert check(add, reply) and format_ok(add, reply, "direct")
    assert not check(add, f"{a} + {b} = {wrong_answer(add)}")
    assert not format_ok(add, f"{a} + {b} is {add.answer}", "direct")  # an equation, or the bare answer
    several = next(e for e in word if len(e.calls) > 1)  # several steps: no single computation to restate
    assert to_messages(several, "direct", equation=True)[-1]["content"] == several.answer
    spell = _example("spell", "a-b")
    assert not format_ok(spell, "1 + 1 = a-b", "direct")  # only number answers come as an equation


def test_score():
    examples = get_task("add").generate("test", 4, seed=0)
    completions = [examples[0].answer, f"work\nAnswer: {examples[1].answer}", "7",
                   f"Answer: {wrong_answer(examples[3])}"]
    assert score("add", examples, completions) == 0.5
    with pytest.raises(UserError, match="completions"):
        score("add", examples, completions[:3])
    with pytest.raises(UserError, match="task"):
        score("sub", examples, completions)


def test_mixture_deals_styles_evenly():
    pairs = mixture("train", 6, seed=0)
    assert pairs == mixture("train", 6, seed=0)
    cells = collections.Counter((e.task, style) for e, style in pairs)
    assert cells == {(name, style): 2 for name in TASKS for style in STYLES}
    assert all(split_of(e.key) == "train" for e, _ in pairs)
    assert [e.task for e, _ in pairs] != sorted(e.task for e, _ in pairs)  # shuffled across tasks
    only = mixture("test", 5, seed=1, styles=("cot",), tasks=["add2", "word"])
    assert {(e.task, s) for e, s in only} == {("add2", "cot"), ("word", "cot")} and len(only) == 10
