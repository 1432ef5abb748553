"""`pocketchat speedrun`: the whole recipe on the embedded data, one command, ending in a report card.

Stages run in order, each in its own folder under RUN/. A stage recorded in RUN/report.json is skipped; one
that was interrupted resumes from its checkpoint. So re-running the same command after a crash or Ctrl-C
continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from pocketchat.config import apply_overrides
from pocketchat.errors import UserError
from pocketchat.report import read_metrics, render, update_report

# Per stage: the stage's own preset plus overrides. `default` is the ~25-minute CPU run; `smoke` is CI's.
PRESETS: dict[str, dict[str, dict]] = {
    "smoke": {
        "pretrain": {"preset": "smoke"},
        "sft": {"preset": "smoke", "seq_len": 128},
        "eval": {"n": 5, "tasks": "add2,word", "styles": "direct,cot,tool"},
    },
    "default": {
        "pretrain": {"preset": "tiny"},
        "sft": {"preset": "tiny"},
        "eval": {"n": 50, "tasks": "add2,add,mul,word,count_letters,sort_list,units", "styles": "direct,cot,tool"},
    },
}


def stage_pretrain(run: Path, spec: dict) -> dict:
    from pocketchat.train.pretrain import PRESETS as P, PretrainConfig, run as pretrain

    cfg = apply_overrides(apply_overrides(PretrainConfig(), P[spec["preset"]], "preset"), _rest(spec), "speedrun")
    out = run / "base"
    evals = pretrain(cfg, out, resume=(out / "checkpoint.pt").exists())
    last = evals[-1] if evals else next(r for r in reversed(read_metrics(out)) if "val_bpb" in r)
    return {"path": str(out), "metrics": {"val_loss": last["val_loss"], "val_bpb": last["val_bpb"]},
            "samples": [last.get("sample", "")]}


def stage_sft(run: Path, spec: dict) -> dict:
    from pocketchat.train.sft import PRESETS as P, SFTConfig, run as sft

    cfg = apply_overrides(apply_overrides(SFTConfig(), P[spec["preset"]], "preset"), _rest(spec), "speedrun")
    cfg.eval_tasks = ""  # the eval stage measures the finished model on the full task table
    out = run / "sft"
    evals = sft(cfg, run / "base", out, resume=(out / "checkpoint.pt").exists())
    return {"path": str(out), "metrics": {"val_loss": evals[-1]["val_loss"]}}


def stage_eval(run: Path, spec: dict) -> dict:
    from pocketchat.engine import Engine
    from pocketchat.evals import format_table, task_accuracy
    from pocketchat.model import CausalLM
    from pocketchat.tokenizer import Tokenizer

    model_dir = run / "sft"
    engine = Engine(CausalLM.from_pretrained(model_dir).eval(), Tokenizer.load(model_dir))
    records = task_accuracy(engine, spec["tasks"].split(","), spec["styles"].split(","), spec["n"])
    metrics = {f"{r['task']}/{r['style']}": r["accuracy"] for r in records}
    metrics["ended"] = sum(r["ended"] for r in records) / len(records)
    samples = [f"{r['task']} ({r['style']})\nuser: {r['sample']['prompt']}\nassistant: {r['sample']['completion']}"
               for r in records[:: max(1, len(records) // 4)]]
    return {"path": str(model_dir), "metrics": metrics, "table": format_table(records), "samples": samples, "results": records}


STAGES = [("pretrain", stage_pretrain), ("sft", stage_sft), ("eval", stage_eval)]


def _rest(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "preset"}


def speedrun(preset: str, out: str | Path) -> Path:
    if preset not in PRESETS:
        raise UserError(f"unknown speedrun preset {preset!r}. Valid presets: {', '.join(PRESETS)}")
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    done = set()
    if (run / "report.json").is_file():
        from pocketchat.report import read_report

        done = set(read_report(run))
    for i, (name, fn) in enumerate(STAGES, start=1):
        if name in done:
            print(f"[{i}/{len(STAGES)}] {name}: done earlier, skipped")
            continue
        print(f"[{i}/{len(STAGES)}] {name}")
        start = time.perf_counter()
        record = fn(run, PRESETS[preset][name])
        record["seconds"] = time.perf_counter() - start
        update_report(run, name, record)
    return render(run)
