"""Task accuracy of a chat model on held-out instances of the verifiable tasks, per task and answer style.

Shared by the SFT stage's eval, `pocketchat eval`, and later RL and the strategy tables: every number here is
the task checker's exact verdict on greedy completions of test-split prompts the model never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

from pocketchat.chat_format import render_prompt
from pocketchat.engine import Engine, SamplingParams
from pocketchat.tasks import check, format_ok, get_task, prompt_messages

DEFAULT_TASKS = ("add2", "add", "mul", "word", "count_letters", "sort_list", "units")


def task_accuracy(engine: Engine, tasks: Sequence[str], styles: Sequence[str], n: int, seed: int = 0,
                  max_tokens: int = 160) -> list[dict]:
    """One record per (task, style): accuracy, format compliance, end-of-turn rate, mean completion tokens."""
    records = []
    for name in tasks:
        examples = get_task(name).generate("test", n, seed)
        for style in styles:
            prompts = [render_prompt(engine.tokenizer, prompt_messages(e, style)) for e in examples]
            params = SamplingParams(temperature=0, max_tokens=max_tokens, tools=style == "tool")
            completions = engine.generate(prompts, params)
            records.append({
                "task": name,
                "style": style,
                "n": len(examples),
                "accuracy": sum(check(e, c.text) for e, c in zip(examples, completions)) / len(examples),
                "format_ok": sum(format_ok(e, c.text, style) for e, c in zip(examples, completions)) / len(examples),
                "ended": sum(c.finish_reason == "stop" for c in completions) / len(examples),
                "tokens": sum(len(c.token_ids) for c in completions) / len(examples),
                "sample": {"prompt": prompt_messages(examples[0], style)[0]["content"], "completion": completions[0].text},
            })
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"| {'task':<14} | {'style':<6} | {'n':>4} | {'accuracy':>8} | {'format':>6} | {'ended':>5} | {'tokens':>6} |",
             f"|{'-' * 16}|{'-' * 8}|{'-' * 6}|{'-' * 10}|{'-' * 8}|{'-' * 7}|{'-' * 8}|"]
    for r in records:
        lines.append(f"| {r['task']:<14} | {r['style']:<6} | {r['n']:>4} | {r['accuracy']:>8.1%} | {r['format_ok']:>6.0%} | "
                     f"{r['ended']:>5.0%} | {r['tokens']:>6.1f} |")
    return "\n".join(lines)
