"""`pocketchat speedrun`: the whole recipe on the embedded data, one command, ending in a report card.

    pretrain -> sft -> eval -> compare -> rm -> ppo (RM reward) -> grpo (task reward) -> dpo -> diversity -> strategies

Stages run in order, each in its own folder under RUN/. A stage recorded in RUN/report.json is skipped; one
that was interrupted resumes from its checkpoint. So re-running the same command after a crash or Ctrl-C
continues where it stopped.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from pocketchat.config import apply_overrides
from pocketchat.errors import UserError
from pocketchat.hardware import peak_rss_mib, reset_peak_rss
from pocketchat.report import ALIGNMENT, read_metrics, read_report, render, update_report, write_environment

# The SFT eval table's tasks; the compare stage picks the cells (task x style) that alignment works on from these.
EVAL_TASKS = "add2,add,mul,word,count_letters,sort_list,units"

# How an aligned model is judged (see `judge`): report and select instances per cell, and the greedy eval table on
# retention_n select instances per cell, which decides whether it may ship.
JUDGED = {"select_n": 150, "report_n": 200, "retention_n": 30, "retention_styles": "direct,cot,tool"}
SMOKE_JUDGED = {"select_n": 4, "report_n": 6, "retention_n": 2, "retention_styles": "direct"}
# the strategies stage's PROMPT_PAIRS: held-out instances per task, and solved train instances shown before each
PROMPT_PAIRS_SPEC = {"pair_tasks": "add2,count_letters", "pair_n": 100, "pair_shots": 3}

# Per stage: the stage's own preset plus overrides. `default` is the ~25-minute CPU run, `smoke` CI's, and `full`
# every stage at its own `tiny` preset (~50 minutes on 2 CPU cores).
PRESETS: dict[str, dict[str, dict]] = {
    "smoke": {
        "pretrain": {"preset": "smoke"},
        "sft": {"preset": "smoke", "seq_len": 128},
        "eval": {"n": 5, "tasks": "add2,word", "styles": "direct,cot,tool"},
        # pass_min 0: a smoke model passes nothing, but the probe still runs
        "compare": {"n": 48, "test_n": 24, "k": 4, "tasks": "add2", "styles": "direct", "max_tokens": 24, "probe_n": 2,
                    "probe_samples": 2, "pass_min": 0.0, "pass_max": 1.0},
        "rm": {"preset": "smoke", "steps": 8, "seq_len": 128},
        "ppo": {"preset": "smoke", "steps": 2, "max_tokens": 16, "eval_n": 4, **SMOKE_JUDGED},
        "grpo": {"preset": "smoke", "steps": 2, "max_tokens": 16, "eval_n": 4, "dynamic_sampling": True, **SMOKE_JUDGED},
        "dpo": {"preset": "smoke", "steps": 4, "seq_len": 128, "eval_n": 4, "eval_tasks": "add2", "eval_styles": "direct",
                **SMOKE_JUDGED},
        "diversity": {"prompts": 4, "samples": 3, "max_tokens": 16},
        "strategies": {"n": 3, "tasks": "add2", "strategies": "direct,cot,sc,tool", "sc_n": 3, "max_tokens": 48,
                       "pair_tasks": "add2", "pair_n": 3, "pair_shots": 1},
    },
    "default": {
        # 300 pretraining steps, not fewer: with 280 the SFT model's calculator calls on add2 fell from 100% to 40%
        # right (it miscopies the numbers from the question; copying emerges late in pretraining).
        "pretrain": {"preset": "tiny", "steps": 300, "eval_every": 150},
        "sft": {"preset": "tiny", "steps": 300, "eval_every": 150, "save_every": 100},
        "eval": {"n": 30, "tasks": EVAL_TASKS, "styles": "direct,cot,tool"},
        # Candidate cells without the calculator: on its cells a sample is decided by one copied digit among ~60
        # tokens, and with them in the mix PPO and DPO lost 10-20 points there (see the README).
        "compare": {"n": 300, "test_n": 100, "k": 4, "tasks": EVAL_TASKS, "styles": "direct,cot", "max_tokens": 128,
                    "probe_n": 16, "probe_samples": 4, "pass_min": 0.1, "pass_max": 0.9},
        "rm": {"preset": "tiny", "steps": 150},
        # RL on the cells the compare stage chose, with 128 completion tokens (a calculator answer takes ~64, and one
        # cut off is penalised as unfinished); judged on 200 held-out instances per cell (the "report" part), shipped
        # on 150 others (the "select" part: at 50, one sample each, a run shipped SFT on gold 0.682 vs 0.681 while the
        # report part gave RL +16 points). GRPO drops the groups whose samples agree (DAPO's dynamic sampling).
        # ptx: the SFT loss on 16 rows of the SFT mixture beside every RL step; without it RL on letter counting cost
        # 3-5 cells of the eval table (add with the calculator 80% -> 57% / 30%), with it none (see the README).
        "ppo": {"preset": "tiny", "steps": 25, "batch_size": 32, "minibatch_size": 16, "max_tokens": 128, "lr": 2e-5,
                "ptx_coef": 0.2, "ptx_batch_size": 16, "eval_every": 0, "eval_n": 0, **JUDGED},
        "grpo": {"preset": "tiny", "dynamic_sampling": True, "steps": 25, "batch_size": 32, "minibatch_size": 16,
                 "max_tokens": 128, "lr": 3e-5, "ptx_coef": 0.2, "ptx_batch_size": 16, "eval_every": 0, "eval_n": 0,
                 **JUDGED},
        # DPO at the tiny preset's lr (5e-5) drove the KL to 26 nats and accuracy from 51% to 30% in 30 steps
        "dpo": {"preset": "tiny", "steps": 30, "lr": 1e-5, "eval_n": 0, **JUDGED},
        "diversity": {"prompts": 12, "samples": 4, "max_tokens": 48},
        "strategies": {"n": 15, "tasks": "add,mul,word", "strategies": "direct,cot,sc,tool", "sc_n": 5, "max_tokens": 160,
                       **PROMPT_PAIRS_SPEC},
    },
    "full": {
        "pretrain": {"preset": "tiny"},
        "sft": {"preset": "tiny"},
        "eval": {"n": 50, "tasks": EVAL_TASKS, "styles": "direct,cot,tool"},
        "compare": {"n": 600, "test_n": 150, "k": 4, "tasks": EVAL_TASKS, "styles": "direct,cot", "max_tokens": 128,
                    "probe_n": 32, "probe_samples": 4, "pass_min": 0.1, "pass_max": 0.9},
        "rm": {"preset": "tiny"},
        "ppo": {"preset": "tiny", "max_tokens": 128, **JUDGED},
        "grpo": {"preset": "tiny", "dynamic_sampling": True, "max_tokens": 128, **JUDGED},
        "dpo": {"preset": "tiny", "eval_n": 0, **JUDGED},
        "diversity": {"prompts": 24, "samples": 4, "max_tokens": 64},
        "strategies": {"n": 40, "tasks": "add,mul,word", "strategies": "direct,cot,sc,tool", "sc_n": 5, "max_tokens": 160,
                       **PROMPT_PAIRS_SPEC},
    },
}


# From a pretrained model (`speedrun --base`): the stages after pretraining, sized for a ~135 M-parameter model on
# 2 CPU cores (SmolLM2-135M-Instruct: ~5 s per LoRA SFT step of 8 x 256 tokens, ~25 s per RL episode of 16). SFT
# trains LoRA adapters; every model is judged greedily against the model as given, SFT on judge_cells and the
# aligned models on the cells the compare stage picks (n = report_n per cell), and the whole eval table on the
# select part (retention). No tool style: a model without tool-call tokens (SmolLM2) cannot call the calculator
# the way the engine runs it. Direct replies to arithmetic restate it ("13 + 70 = 83", direct_equations): trained to
# give the bare number, SmolLM2 fell from 21.5% to 2.5% on 2-digit sums (restating them: 69%). RL at lr 5e-6 moved no
# weight by more than 1e-4 in 10 episodes; at 2e-5 (with ptx) it moves, and PPO learned the reward model's taste for
# bare answers (direct sums 69% -> 5%): the retention check keeps such a model from shipping (see the README).
BASE_JUDGE_CELLS = "add2/direct,count_letters/direct,units/direct"
BASE_JUDGED = {"select_n": 30, "report_n": 200, "temperature": 0.0, "retention_n": 40, "retention_styles": "direct,cot"}
BASE_PTX = {"ptx_coef": 0.2, "ptx_batch_size": 8, "direct_equations": True}
BASE_PRESETS: dict[str, dict[str, dict]] = {
    "smoke": {
        "import": {},
        "sft": {"preset": "smoke", "seq_len": 128, "lora": "r=4,alpha=8", "judge_cells": "add2/direct",
                **SMOKE_JUDGED, "temperature": 0.0},
        "eval": {"n": 4, "tasks": "add2", "styles": "direct,cot"},
        "compare": {"n": 16, "test_n": 8, "k": 2, "tasks": "add2", "styles": "direct", "max_tokens": 16, "probe_n": 2,
                    "probe_samples": 2, "pass_min": 0.0, "pass_max": 1.0},
        "rm": {"preset": "smoke", "steps": 2, "seq_len": 128},
        "ppo": {"preset": "smoke", "steps": 1, "max_tokens": 16, "eval_n": 0, **SMOKE_JUDGED, "temperature": 0.0},
        "grpo": {"preset": "smoke", "steps": 1, "max_tokens": 16, "eval_n": 0, **SMOKE_JUDGED, "temperature": 0.0},
        "dpo": {"preset": "smoke", "steps": 2, "seq_len": 128, "eval_n": 0, **SMOKE_JUDGED, "temperature": 0.0},
        "strategies": {"n": 2, "tasks": "add2", "strategies": "direct,cot", "sc_n": 2, "max_tokens": 32,
                       "pair_tasks": "add2", "pair_n": 2, "pair_shots": 1},
    },
    "default": {
        "import": {},
        "sft": {"preset": "lora", "steps": 100, "batch_size": 8, "seq_len": 256, "lora": "r=16,alpha=32",
                "direct_equations": True, "eval_every": 0, "save_every": 25, "judge_cells": BASE_JUDGE_CELLS,
                **BASE_JUDGED},
        "eval": {"n": 15, "tasks": EVAL_TASKS, "styles": "direct,cot"},
        "compare": {"n": 120, "test_n": 40, "k": 4, "tasks": EVAL_TASKS, "styles": "direct", "max_tokens": 64,
                    "probe_n": 8, "probe_samples": 4, "pass_min": 0.1, "pass_max": 0.9},
        "rm": {"preset": "tiny", "steps": 40, "batch_size": 8, "seq_len": 192, "lr": 2e-5, "warmup_steps": 4,
               "eval_every": 0, "save_every": 20},
        "ppo": {"preset": "tiny", "steps": 8, "batch_size": 16, "minibatch_size": 8, "max_tokens": 64, "lr": 2e-5,
                "epochs": 1, "eval_every": 0, "eval_n": 0, "save_every": 4, **BASE_PTX, **BASE_JUDGED},
        "grpo": {"preset": "tiny", "dynamic_sampling": True, "steps": 10, "batch_size": 16, "minibatch_size": 8,
                 "max_tokens": 64, "lr": 2e-5, "epochs": 1, "eval_every": 0, "eval_n": 0, "save_every": 5, **BASE_PTX,
                 **BASE_JUDGED},
        "dpo": {"preset": "tiny", "steps": 15, "batch_size": 8, "seq_len": 192, "lr": 1e-5, "warmup_steps": 2,
                "eval_every": 0, "eval_n": 0, "save_every": 15, **BASE_JUDGED},
        "strategies": {"n": 10, "tasks": "add2,count_letters", "strategies": "direct,cot,sc", "sc_n": 3, "max_tokens": 128,
                       **PROMPT_PAIRS_SPEC},
    },
}


def _config(config_cls, presets: dict, spec: dict):
    rest = {k: v for k, v in spec.items() if k != "preset"}
    return apply_overrides(apply_overrides(config_cls(), presets[spec["preset"]], "preset"), rest, "speedrun")


def _last_eval(evals: list[dict], folder: Path, key: str) -> dict:
    """The final eval record: returned by the stage, or read back from its metrics when it was already done."""
    return evals[-1] if evals else next(r for r in reversed(read_metrics(folder)) if key in r)


def _engine(model_dir: Path):
    from pocketchat.chat_format import tool_turn_renderer
    from pocketchat.engine import Engine
    from pocketchat.lora import load_model
    from pocketchat.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(model_dir)
    return Engine(load_model(model_dir).eval(), tokenizer, tool_turn=tool_turn_renderer(tokenizer))


# ---- stage 1 and 2: base model, chat model ---------------------------------------------------------------------

def stage_pretrain(run: Path, spec: dict) -> dict:
    from pocketchat.train.pretrain import PRESETS as P, PretrainConfig, run as pretrain

    out = run / "base"
    evals = pretrain(_config(PretrainConfig, P, spec), out, resume=(out / "checkpoint.pt").exists())
    from pocketchat.lora import load_model

    last = _last_eval(evals, out, "val_bpb")
    parameters = sum(p.numel() for p in load_model(out).parameters())
    return {"path": str(out), "metrics": {"val_loss": last["val_loss"], "val_bpb": last["val_bpb"], "parameters": parameters},
            "samples": [last.get("sample", "")]}


def stage_sft(run: Path, spec: dict) -> dict:
    """SFT on the embedded mixture; from a pretrained model, also judged against it on the judge cells."""
    from pocketchat.train.sft import PRESETS as P, SFTConfig, run as sft

    cfg = _config(SFTConfig, P, {k: v for k, v in spec.items() if k not in (*JUDGE_KEYS, "judge_cells")})
    cfg.eval_tasks = ""  # the eval stage measures the finished model on the full task table
    out = run / "sft"
    evals = sft(cfg, run / "base", out, resume=(out / "checkpoint.pt").exists())
    record = {"path": str(out), "metrics": {"val_loss": _last_eval(evals, out, "val_loss")["val_loss"]}}
    if from_base(run):
        from pocketchat.train.rl import parse_cells

        judged = judge(run, out, parse_cells(spec["judge_cells"]), spec)
        record |= judged | {"metrics": record["metrics"] | judged["metrics"]}
    return record


def stage_eval(run: Path, spec: dict) -> dict:
    """The task table of the SFT model (greedy); from a pretrained model, that model's first."""
    from pocketchat.task_eval import format_table, task_accuracy

    models = (["base"] if from_base(run) else []) + ["sft"]
    tables, metrics, samples, results = [], {}, [], {}
    for label in models:
        records = task_accuracy(_engine(run / label), spec["tasks"].split(","), spec["styles"].split(","), spec["n"])
        prefix = "base:" if label == "base" else ""
        metrics |= {f"{prefix}{r['task']}/{r['style']}": r["accuracy"] for r in records}
        metrics[f"{prefix}ended"] = sum(r["ended"] for r in records) / len(records)
        tables.append((f"**{label}**\n\n" if len(models) > 1 else "") + format_table(records))
        samples += [f"{label}, {r['task']} ({r['style']})\nuser: {r['sample']['prompt']}\nassistant: {r['sample']['completion']}"
                    for r in records[:: max(1, len(records) // 4)]]
        results[label] = records
    return {"path": str(run / "sft"), "metrics": metrics, "table": "\n\n".join(tables), "samples": samples,
            "results": results["sft"], **({"results_base": results["base"]} if "base" in results else {})}


# ---- a run from a pretrained model (--base) --------------------------------------------------------------------

def from_base(run: Path) -> bool:
    """Whether RUN started from a pretrained model (`speedrun --base`) rather than from pretraining."""
    return (run / "report.json").is_file() and "import" in read_report(run)


def stage_import(run: Path, spec: dict) -> dict:
    """RUN/base: the pretrained model. `smollm2` (the PyPI GGUF) or a .gguf file is converted; a model or
    adapter folder is linked as it is."""
    from pocketchat.gguf_import import import_gguf, smollm2_gguf
    from pocketchat.lora import load_model

    source, out = spec["base"], run / "base"
    if source == "smollm2" or source.endswith(".gguf"):
        if not (out / "config.json").is_file():
            import_gguf(smollm2_gguf() if source == "smollm2" else source, out)
    else:
        folder = Path(source).resolve()
        if not ((folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()):
            raise UserError(f"--base {source}: not a model folder (no config.json or adapter_config.json)")
        if not out.exists():
            out.symlink_to(folder, target_is_directory=True)
    parameters = sum(p.numel() for p in load_model(out).parameters())
    return {"path": str(source), "metrics": {"parameters": parameters}}


def shipped_folder(run: Path) -> Path:
    """The folder of the model the run ships, as a plain model folder: an SFT run with LoRA is merged into
    RUN/sft-merged (once) so transformers and `pocketchat serve` open it like any other."""
    folder = run / final_model(run)
    if not (folder / "adapter_config.json").is_file():
        return folder
    merged = run / f"{folder.name}-merged"
    if not (merged / "config.json").is_file():
        from pocketchat.lora import load_model
        from pocketchat.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(folder)
        model = load_model(folder)
        model.save_pretrained(merged)
        tokenizer.save(merged, model_max_length=model.config.max_position_embeddings)
    return merged


# ---- stage 3: comparisons and the reward model -----------------------------------------------------------------

def stage_compare(run: Path, spec: dict) -> dict:
    """The contractor step, by the programmatic labeler: k samples of the SFT model per prompt, ranked. Train
    prompts for the RM and DPO; prompts of the held-out "select" part for the RM's held-out accuracy.

    First, which prompts: the SFT model's pass rate per task and style at temperature 1, and only the cells
    between pass_min and pass_max (compare/probe.json). There its samples are sometimes right and sometimes
    wrong, so the comparisons teach the RM what a right answer is, and PPO, GRPO and DPO train where the policy
    can still learn. Every alignment stage works on these cells and is judged on them."""
    from pocketchat.alignment_eval import cells_of
    from pocketchat.labeler import write_comparisons
    from pocketchat.tasks import get_task
    from pocketchat.train.rl import choose_cells

    engine, out = _engine(run / "sft"), run / "compare"
    candidates = cells_of(spec["tasks"].split(","), spec["styles"].split(","))
    cells = choose_cells(engine, candidates, spec["probe_n"], spec["probe_samples"], 0, spec["max_tokens"],
                         spec["pass_min"], spec["pass_max"], out / "probe.json")
    rates = json.loads((out / "probe.json").read_text())["cells"]
    metrics = {"cells": len(cells)}
    for split, n in (("train", spec["n"]), ("test", spec["test_n"])):
        per_cell = -(-n // len(cells))
        if split == "train":
            cases = [(e, s) for t, s in cells for e in get_task(t).generate("train", per_cell, 0)]
        else:
            cases = [(e, s) for t, s in cells for e in get_task(t).held_out("select", per_cell, 0)]
        random.Random(f"compare/{split}").shuffle(cases)
        stats = write_comparisons(engine, cases[:n], spec["k"], out / f"{split}.jsonl", seed=0 if split == "train" else 1,
                                  max_tokens=spec["max_tokens"])
        metrics |= {f"{split}_pairs": stats.pairs, f"{split}_prompts": stats.prompts}
    if not metrics["train_pairs"]:
        raise UserError(f"{out}: every sample ties under the labeler, so there is nothing to compare; "
                        "train the SFT model longer")
    table = "\n".join(["| task | style | pass rate (temperature 1) | aligned on it |", "|---|---|---|---|"] +
                      [f"| {r['task']} | {r['style']} | {r['pass_rate']:.0%} | {'yes' if r['kept'] else ''} |" for r in rates])
    return {"path": str(out), "metrics": metrics, "table": table}


def alignment_cells(run: Path) -> list[tuple[str, str]]:
    """The task/style cells the compare stage chose: what PPO, GRPO and DPO train on and are judged on."""
    return [(r["task"], r["style"]) for r in json.loads((run / "compare" / "probe.json").read_text())["cells"] if r["kept"]]


def comparison_files(run: Path) -> tuple[str, str]:
    """(training data, held-out data) for the RM and DPO; with no held-out pairs, they hold out training prompts."""
    test = run / "compare" / "test.jsonl"
    return str(run / "compare" / "train.jsonl"), str(test) if test.stat().st_size else ""


def stage_rm(run: Path, spec: dict) -> dict:
    from pocketchat.train.reward import PRESETS as P, RMConfig, run as train_rm

    cfg = _config(RMConfig, P, spec)
    cfg.data, cfg.eval_data = comparison_files(run)
    out = run / "rm"
    last = _last_eval(train_rm(cfg, run / "sft", out, resume=(out / "checkpoint.pt").exists()), out, "accuracy")
    return {"path": str(out), "metrics": {k: last[k] for k in ("accuracy", "reward_mean", "reward_std")}}


# ---- stage 4: RL (PPO on the RM, GRPO on the task checker) and DPO ---------------------------------------------
#
# Each aligned model is judged twice, on disjoint parts of the test split (`tasks.held_out_part`): on the
# "select" part to decide whether it ships (`final_model`), and on the "report" part, paired with the SFT model
# on the same instances and seeds, for the figures the report card shows (`judge`).

_graded_cache: dict[tuple, object] = {}  # the SFT and base models' samples and select gold, shared by the stages

# a stage spec's keys for `judge` and `retention`, not for the stage's config
JUDGE_KEYS = ("select_n", "report_n", "temperature", "retention_n", "retention_styles")


def _samples(run: Path, model_dir: Path, cells: list[tuple[str, str]], n: int, seed: int, temperature: float,
             part: str = "report"):
    """(engine, prompts, completions, graded records) of a model on a held-out part; cached for RUN's sft and base."""
    from pocketchat.alignment_eval import grade, held_out_cases, sample_cases

    key = (str(model_dir), tuple(cells), n, seed, temperature, part)
    if key in _graded_cache:
        return _graded_cache[key]
    engine = _engine(model_dir)
    cases = held_out_cases(cells, n, seed, part)
    prompts, completions = sample_cases(engine, cases, seed, temperature=temperature)
    result = (engine, prompts, completions, grade(cases, completions, seed))
    if model_dir in (run / "sft", run / "base"):
        _graded_cache[key] = result
    return result


def retention(run: Path, model_dir: Path, spec: dict) -> tuple[dict, list[dict]]:
    """What finetuning cost elsewhere: the whole eval table (every task in retention_styles), greedy, on the
    "select" part, paired with the model it is compared with (SFT; from --base, the model as given). Returns
    the count of cells significantly worse and better (McNemar, p < 0.05) and the per-cell rows."""
    from pocketchat.alignment_eval import cells_of, paired_report

    against = "base" if from_base(run) else "sft"
    cells = cells_of(EVAL_TASKS.split(","), spec["retention_styles"].split(","))
    n, seed = spec["retention_n"], spec.get("seed", 0)
    mine = _samples(run, model_dir, cells, n, seed, 0.0, "select")[3]
    rows = paired_report(mine, _samples(run, run / against, cells, n, seed, 0.0, "select")[3], cells, against)["cells"]
    significant = [c for c in rows if c["p"] < 0.05]
    return {"cells_worse": sum(c["diff"] < 0 for c in significant),
            "cells_better": sum(c["diff"] > 0 for c in significant)}, rows


def judge(run: Path, model_dir: Path, cells: list[tuple[str, str]], spec: dict) -> dict:
    """Report metrics of a finetuned model (see above), and for an aligned one its selection metrics. Against
    the SFT model; in a run from a pretrained model (`--base`), against that model as given, with the SFT
    comparison beside it (accuracy_sft, p_accuracy_sft, ...) for the aligned ones."""
    from pocketchat.alignment_eval import paired_report, policy_eval, sample_stats
    from pocketchat.lora import load_model

    seed, select_n, report_n, temperature = spec.get("seed", 0), spec["select_n"], spec["report_n"], spec.get("temperature", 1.0)
    engine, prompts, completions, records = _samples(run, model_dir, cells, report_n, seed, temperature)
    baselines = (["base"] if model_dir == run / "sft" else ["base", "sft"]) if from_base(run) else ["sft"]
    result = paired_report(records, _samples(run, run / baselines[0], cells, report_n, seed, temperature)[3],
                           cells, baselines[0])
    metrics = result["metrics"] | {"temperature": temperature}
    if "sft" in baselines[1:]:
        vs_sft = paired_report(records, _samples(run, run / "sft", cells, report_n, seed, temperature)[3], cells, "sft")
        metrics |= {f"{k}_sft" if k.startswith("p_") or k.endswith("_ci") else k: v for k, v in vs_sft["metrics"].items()
                    if k not in ("n", "accuracy", "gold")}
    if model_dir != run / "sft":
        sft = load_model(run / "sft").eval()
        if temperature == 1.0:  # the KL estimate is unbiased only for samples of the policy itself
            metrics |= sample_stats(engine, prompts, completions, sft)
        key = ("select_gold", str(run), tuple(cells), select_n, seed)  # the SFT model's, the same for every stage
        if key not in _graded_cache:
            _graded_cache[key] = policy_eval(_engine(run / "sft"), sft, cells, select_n, seed)["gold"]
        metrics |= {"select_gold": policy_eval(engine, sft, cells, select_n, seed)["gold"],
                    "select_gold_sft": _graded_cache[key]}
    table_rows = []
    if "retention_n" in spec and model_dir != run / baselines[0]:
        counts, table_rows = retention(run, model_dir, spec)
        metrics |= counts
    against = {"sft": "SFT", "base": "base"}[baselines[0]]
    header = (f"| task | style | n | {against} | this model | difference [95% CI] | won / lost | p |\n"
              "|---|---|---|---|---|---|---|---|")
    table = "\n".join([header] + [f"| {c['task']} | {c['style']} | {c['n']} | {c['mean_a']:.1%} | {c['mean_b']:.1%} | "
                                  f"{c['diff']:+.1%} [{c['ci_low']:+.1%}, {c['ci_high']:+.1%}] | {c['wins']} / {c['losses']} | "
                                  f"{c['p']:.2g} |" for c in result["cells"]])
    samples = [f"{kind}: {x['task']} ({x['style']}), answer {x['answer']}\nuser: {x['question']}\n{against}: "
               f"{x['baseline']}\nthis model: {x['model']}" for kind in ("fixed", "broken") for x in result[kind]]
    if table_rows:
        table += (f"\n\nThe whole eval table, greedy, {table_rows[0]['n']} held-out \"select\" instances per cell against "
                  f"{against}; significantly worse (p < 0.05): {_moved(table_rows, worse=True)}; better: "
                  f"{_moved(table_rows, worse=False)}.")
    return {"metrics": metrics, "cells": result["cells"], "retention": table_rows, "table": table, "samples": samples}


def _moved(rows: list[dict], worse: bool) -> str:
    """The cells of a paired table that moved significantly (p < 0.05) down (worse) or up, with both figures."""
    moved = [c for c in rows if c["p"] < 0.05 and (c["diff"] < 0) == worse]
    return ", ".join(f"{c['task']}/{c['style']} {c['mean_a']:.0%} → {c['mean_b']:.0%}" for c in moved) or "none"


def _stage_rl(run: Path, spec: dict, name: str, algo: str, reward: str) -> dict:
    from pocketchat.train.rl import PRESETS as P, RLConfig, run as rl

    cfg = _config(RLConfig, P, {k: v for k, v in spec.items() if k not in JUDGE_KEYS})
    cfg.algo, cfg.reward = algo, reward
    if reward != "task":
        cfg.reward_norm = "stats"  # the RM's held-out mean/std, so the KL coefficient means the same for any RM
    cells = alignment_cells(run)
    cfg.cells = ",".join(f"{t}/{s}" for t, s in cells)
    out = run / name
    rl(cfg, run / "sft", out, resume=(out / "checkpoint.pt").exists())
    return {"path": str(out), **judge(run, out, cells, spec)}


def stage_ppo(run: Path, spec: dict) -> dict:
    return _stage_rl(run, spec, "ppo", "ppo", str(run / "rm"))


def stage_grpo(run: Path, spec: dict) -> dict:
    return _stage_rl(run, spec, "grpo", "grpo", "task")


def stage_dpo(run: Path, spec: dict) -> dict:
    from pocketchat.train.dpo import PRESETS as P, DPOConfig, run as dpo

    cfg = _config(DPOConfig, P, {k: v for k, v in spec.items() if k not in JUDGE_KEYS})
    cfg.data, cfg.eval_data = comparison_files(run)
    out = run / "dpo"
    last = _last_eval(dpo(cfg, run / "sft", out, resume=(out / "checkpoint.pt").exists()), out, "pref_accuracy")
    record = judge(run, out, alignment_cells(run), spec)
    record["metrics"]["pref_accuracy"] = last["pref_accuracy"]
    return {"path": str(out), **record}


def stage_diversity(run: Path, spec: dict) -> dict:
    """The talk's "RLHF models lose entropy", measured: distinct-n and token entropy of base, SFT and RL."""
    from pocketchat.alignment_eval import diversity, diversity_prompts

    prompts = diversity_prompts(spec["prompts"])
    rows = []
    for label, folder in (("base", "base"), ("sft", "sft"), ("ppo", "ppo"), ("grpo", "grpo"), ("dpo", "dpo")):
        if (run / folder / "config.json").is_file():
            rows.append({"model": label, **diversity(_engine(run / folder), prompts, spec["samples"], spec["max_tokens"])})
    header = "| model | distinct-1 | distinct-2 | token entropy (nats) | length |\n|---|---|---|---|---|"
    table = "\n".join([header] + [f"| {r['model']} | {r['distinct_1']:.3f} | {r['distinct_2']:.3f} | {r['entropy']:.3f} | "
                                  f"{r['length']:.1f} |" for r in rows])
    metrics = {f"{r['model']}/{k}": r[k] for r in rows for k in ("distinct_2", "entropy")}
    return {"metrics": metrics, "table": table, "results": rows}


def final_model(run: Path) -> str:
    """The folder the run ships: the aligned model (PPO, GRPO or DPO) with the best gold on the selection part
    of the held-out instances, if it beats the SFT model there and no cell of the eval table got significantly
    worse (`retention`); otherwise the SFT model. The report's figures come from the other part, so this choice
    never flatters them. Alignment that makes the assistant worse, where it trained or elsewhere, doesn't ship."""
    report = read_report(run) if (run / "report.json").is_file() else {}
    best, best_margin = "sft", 0.0
    for name in ALIGNMENT:
        m = report.get(name, {}).get("metrics", {})
        if "select_gold" not in m or not (run / name / "config.json").is_file() or m.get("cells_worse", 0) > 0:
            continue
        margin = m["select_gold"] - m["select_gold_sft"]
        if margin > best_margin:
            best, best_margin = name, margin
    return best


# The talk's two prompting claims, each a pair of prompts on the same held-out instances (see stage_strategies):
# (label, A, B), each (model folder, strategy, solved train instances shown first: pair_shots or none). "shipped"
# is the model the run ships. The base model gets the demonstrations a base model is prompted with; the SFT model
# is asked as an assistant is, with none.
PROMPT_PAIRS = (("the SFT model vs the base model prompted as an assistant", ("sft", "direct", False), ("base", "dialogue", True)),
                ("asking for success: CoT vs expert persona + answer-seeking CoT", ("shipped", "cot", False),
                 ("shipped", "expert", False)))


def stage_strategies(run: Path, spec: dict) -> dict:
    """Direct vs chain of thought vs self-consistency vs the calculator tool, on the model the run ships; then
    the PROMPT_PAIRS, paired on pair_n instances per task (McNemar)."""
    from tqdm.auto import tqdm

    from pocketchat.stats import paired_test
    from pocketchat.strategies.llm import LocalLLM
    from pocketchat.strategies.run import Settings, evaluate

    model_dir = shipped_folder(run)
    llm = LocalLLM(_engine(model_dir))
    settings = Settings(n=spec["sc_n"], max_tokens=spec["max_tokens"])
    cells = [(t, s) for t in spec["tasks"].split(",") for s in spec["strategies"].split(",")]
    rows = [evaluate(llm, s, t, spec["n"], settings) for t, s in tqdm(cells, desc="strategies", dynamic_ncols=True)]
    header = "| task | strategy | accuracy | tokens / instance | calls |\n|---|---|---|---|---|"
    table = "\n".join([header] + [f"| {r['task']} | {r['strategy']}{' k=' + str(spec['sc_n']) if r['strategy'] == 'sc' else ''} | "
                                  f"{r['accuracy']:.1%} | {r['tokens']:.0f} | {r['calls']:.1f} |" for r in rows])
    metrics = {f"{r['task']}/{r['strategy']}": r["accuracy"] for r in rows}
    pairs = []
    llms = {"shipped": llm}
    for label, a, b in tqdm(PROMPT_PAIRS, desc="prompt pairs", dynamic_ncols=True):
        for task in spec["pair_tasks"].split(","):
            done = []
            for folder, strategy, shots in (a, b):
                if folder not in llms:
                    llms[folder] = LocalLLM(_engine(run / folder))
                settings = Settings(max_tokens=spec["max_tokens"], shots=spec["pair_shots"] if shots else 0)
                done.append(evaluate(llms[folder], strategy, task, spec["pair_n"], settings, workers=16))
            test = paired_test(done[0]["correct"], done[1]["correct"])
            name = [f"{x[0]}, {x[1]}" + (f", {spec['pair_shots']}-shot" if x[2] else "") for x in (a, b)]
            pairs.append({"pair": label, "task": task, "a": name[0], "b": name[1], **test.as_dict()})
            metrics[f"{task}/{b[0]}_{b[1]}_vs_{a[0]}_{a[1]}"] = test.diff
    table += ("\n\nThe talk's prompting claims, each on the same held-out instances (greedy; shots: solved train "
              "instances shown first; p: McNemar's exact test):\n\n"
              "| comparison | task | n | A | B | accuracy A → B | Δ [95% CI] | won / lost | p |\n|---|---|---|---|---|---|---|---|---|\n")
    table += "\n".join(f"| {r['pair']} | {r['task']} | {r['n']} | {r['a']} | {r['b']} | {r['mean_a']:.1%} → {r['mean_b']:.1%} | "
                       f"{r['diff']:+.1%} [{r['ci_low']:+.1%}, {r['ci_high']:+.1%}] | {r['wins']} / {r['losses']} | {r['p']:.2g} |"
                       for r in pairs)
    return {"path": str(model_dir), "metrics": metrics, "table": table, "results": rows, "prompt_pairs": pairs}


STAGES = [("pretrain", stage_pretrain), ("sft", stage_sft), ("eval", stage_eval), ("compare", stage_compare),
          ("rm", stage_rm), ("ppo", stage_ppo), ("grpo", stage_grpo), ("dpo", stage_dpo),
          ("diversity", stage_diversity), ("strategies", stage_strategies)]
# From a pretrained model: its import instead of pretraining; no diversity stage.
BASE_STAGES = [("import", stage_import), *STAGES[1:-2], STAGES[-1]]


def speedrun(preset: str, out: str | Path, base: str | None = None, full_sft: bool = False) -> Path:
    """Run (or continue) the recipe into OUT: from pretraining, or with `base` from a pretrained model (a model
    or adapter folder, a .gguf file, or "smollm2"), whose SFT uses LoRA unless full_sft."""
    presets = BASE_PRESETS if base else PRESETS
    if preset not in presets:
        raise UserError(f"unknown speedrun preset {preset!r}{' for --base' if base else ''}. Valid presets: {', '.join(presets)}")
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    report = read_report(run) if (run / "report.json").is_file() else {}
    if report and bool(base) != ("import" in report):
        started = f"from {report['import']['path']}" if "import" in report else "from pretraining"
        raise UserError(f"{run} holds a run started {started}; use another --out")
    if base and "import" in report and report["import"]["path"] != base:
        raise UserError(f"{run} holds a run from --base {report['import']['path']}, not {base}; use another --out")
    stages = BASE_STAGES if base else STAGES
    write_environment(run)
    for i, (name, fn) in enumerate(stages, start=1):
        if name in report:
            print(f"[{i}/{len(stages)}] {name}: done earlier, skipped")
            continue
        print(f"[{i}/{len(stages)}] {name}", flush=True)
        spec = dict(presets[preset][name])
        if name == "import":
            spec["base"] = base
        if name == "sft" and full_sft:
            spec["lora"] = ""
        reset_peak_rss()
        start = time.perf_counter()
        record = fn(run, spec)
        record["seconds"] = time.perf_counter() - start
        record["peak_rss_mib"] = peak_rss_mib()
        update_report(run, name, record)
        report[name] = record
    return render(run)
