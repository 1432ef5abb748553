"""The import rules of the README's "Who may import whom", checked against the code's own imports.

Imports are read with `ast` from every module under src/pocketchat, including those inside functions (a
late import is still a dependency), so nothing is imported here and no package's side effects run.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "pocketchat"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(SRC).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(module: str) -> set[str]:
    """The pocketchat modules `module` imports; `from pkg import sub` counts as importing the submodule."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m for m in out if m == "pocketchat" or m.startswith("pocketchat.")}


IMPORTS = {m: imported(m) for m in MODULES}


def unit(module: str) -> str:
    """The README's unit of a module: its top-level module, or its subpackage as `name/`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "pocketchat"
    return parts[1] + "/" if (PACKAGE / parts[1]).is_dir() else parts[1]


def readme_layers() -> list[list[str]]:
    """The rows of the README's layer block, top first: the fenced block after "Who may import whom"."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"Who may import whom.*?```\n(.*?)```", text, re.S)
    assert found, "README.md has no fenced block after 'Who may import whom'"
    return [row.split("#")[0].split() for row in found.group(1).splitlines() if row.split("#")[0].strip()]


LAYERS = readme_layers()
LAYER = {u: i for i, row in enumerate(LAYERS) for u in row}


def test_every_module_has_a_layer():
    """A new module or package is placed in the README's layers before it is imported by anyone."""
    units = {unit(m) for m in MODULES} - {"pocketchat"}
    assert not units - LAYER.keys(), f"add to the README's 'Who may import whom': {sorted(units - LAYER.keys())}"
    assert not LAYER.keys() - units, f"the README names units that don't exist: {sorted(LAYER.keys() - units)}"


def test_imports_only_point_down():
    """A module imports its own package and the rows below its own, never a row above or its own row: so the
    model knows nothing of training, serving or the CLI, the engine nothing of the server, a stage never
    another stage, and no two packages import each other."""
    wrong = []
    for module, targets in IMPORTS.items():
        for target in targets:
            src, dst = unit(module), unit(target)
            if src != dst and "pocketchat" not in (src, dst) and LAYER.get(dst, -1) <= LAYER.get(src, -1):
                wrong.append(f"{module} -> {target}  ({src} row {LAYER[src] + 1}, {dst} row {LAYER[dst] + 1})")
    assert not wrong, "imports against the README's layers:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_in_a_circle():
    """Within a package too, the modules' imports form no cycle (Tarjan's strongly connected components)."""
    graph = {m: {t for t in IMPORTS[m] if t in MODULES} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


# What runs a model. The tool modules of engine/ (calculator, sandbox, tool-call parsing) are not in it.
RUNS_A_MODEL = {"pocketchat.model", "pocketchat.lora", "pocketchat.gguf_import", "pocketchat.tokenizer",
                "pocketchat.engine", "pocketchat.engine.generate", "pocketchat.engine.batcher",
                "pocketchat.engine.sampling"}


def test_strategies_reach_a_model_only_through_the_llm_interface():
    """Only strategies/llm.py (local engine or OpenAI endpoint) touches a model, so every strategy runs
    unchanged against either."""
    strategies = [m for m in MODULES if m.startswith("pocketchat.strategies.") and m != "pocketchat.strategies.llm"]
    wrong = {m: sorted(IMPORTS[m] & RUNS_A_MODEL) for m in strategies if IMPORTS[m] & RUNS_A_MODEL}
    assert not wrong, wrong


def code_strings(path: Path) -> set[str]:
    """The string constants of a module's code: docstrings left out (they may name the format as an example)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_engine_knows_tokens_and_tools_not_the_chat_format():
    """The engine neither imports the chat format nor writes it: the tool turn it forces comes from the chat
    format (`chat_format.tool_turn_renderer`), the end of turn it stops on from the tokenizer."""
    engine = [m for m in MODULES if m.startswith("pocketchat.engine")]
    wrong = {m: "pocketchat.chat_format" for m in engine if "pocketchat.chat_format" in IMPORTS[m]}
    assert not wrong, wrong
    chatml = {m: sorted(t for t in code_strings(MODULES[m]) if "<|im_start|>" in t or "<|im_end|>" in t) for m in engine}
    assert not any(chatml.values()), {m: found for m, found in chatml.items() if found}
