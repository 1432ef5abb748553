"""The report card of a run: `RUN/report.json` (one key per stage) rendered to `RUN/report.md` with PNG plots.

Each stage of the speedrun records its time and key metrics in report.json as it finishes; this module only
reads that file and the stages' metrics.jsonl, so `pocketchat report RUN` can re-render at any time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pocketchat.errors import UserError
from pocketchat.files import atomic_write_json

STAGE_TITLES = {"import": "The pretrained model, as given", "pretrain": "Pretraining (base model)",
                "sft": "Supervised finetuning (chat model)", "eval": "Task accuracy of the chat model", "compare": "Comparisons (programmatic labeler)",
                "rm": "Reward model", "ppo": "RLHF: PPO on the reward model", "grpo": "RL: GRPO on the task checker",
                "dpo": "DPO on the comparisons", "diversity": "Output diversity: base vs SFT vs RL",
                "strategies": "Strategies on the shipped model"}
ALIGNMENT = ("ppo", "grpo", "dpo")


def read_report(run: Path) -> dict:
    path = Path(run) / "report.json"
    if not path.is_file():
        raise UserError(f"{run}: no report.json (is this a speedrun folder?)")
    return json.loads(path.read_text())


def update_report(run: Path, stage: str, record: dict) -> None:
    path = Path(run) / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[stage] = record
    atomic_write_json(path, report)


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def plot_curves(run: Path, stage: str, folder: Path, keys: list[str], title: str, right: tuple[str, ...] = ()) -> str | None:
    """One PNG of the given metrics over steps (those in `right` on a second y axis, for a metric on another
    scale); None when the stage logged none of them."""
    records = read_metrics(folder)
    series = {k: [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))] for k in [*keys, *right]}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    axes = {k: ax for k in keys}
    if any(k in series for k in right):
        twin = ax.twinx()
        axes |= {k: twin for k in right}
        twin.set_ylabel(", ".join(k for k in right if k in series))
    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for k, points in series.items():
        axes[k].plot(*zip(*points), label=k, color=next(colors), marker="o" if len(points) < 20 else None)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.legend(loc="upper right", bbox_to_anchor=(1, 1), bbox_transform=ax.transAxes, fontsize="small")
    fig.tight_layout()
    (run / "plots").mkdir(exist_ok=True)
    name = f"plots/{stage}.png"
    fig.savefig(run / name, dpi=100)
    plt.close(fig)
    return name


PLOTS = {"pretrain": ["train_loss", "val_loss"], "sft": ["train_loss", "val_loss"], "rm": ["train_loss", "eval_loss", "accuracy"],
         "ppo": ["reward", "kl"], "grpo": ["reward", "kl"], "dpo": ["train_loss", "eval_loss", "pref_accuracy"]}
# On a second axis: RL's gold score (in [0, 1]) beside the RM reward and KL, where over-optimisation shows as
# reward rising while gold does not.
RIGHT_AXIS = {"ppo": ("gold", "eval/gold"), "grpo": ("gold", "eval/gold"), "dpo": ("gold",)}


def alignment_table(report: dict) -> str | None:
    """Each finetuned model against its baseline on the same held-out instances and seeds (see
    `speedrun.judge`): accuracy and gold, the paired difference with its 95% CI and p-value. The baseline is
    the SFT model, or in a run from a pretrained model (`--base`) that model as given."""
    rows = [(name, report[name]["metrics"]) for name in ("sft", *ALIGNMENT) if "p_gold" in report.get(name, {}).get("metrics", {})]
    if not rows:
        return None
    ref = "base" if any("accuracy_base" in m for _, m in rows) else "sft"
    vs_sft = ref == "base"
    lines = [f"| model | n | accuracy: {ref} → model | Δ [95% CI] | p |{' p vs SFT |' if vs_sft else ''} gold: {ref} → model | "
             f"Δ [95% CI] | p | KL to SFT | entropy | length | eval-table cells worse |",
             "|---|---|---|---|---|" + ("---|" if vs_sft else "") + "---|---|---|---|---|---|---|"]
    for name, m in rows:
        (al, ah), (gl, gh) = m["accuracy_diff_ci"], m["gold_diff_ci"]
        extra = f" {m['p_accuracy_sft']:.2g} |" if "p_accuracy_sft" in m else (" |" if vs_sft else "")
        lines.append(f"| {name} | {m['n']} | {m[f'accuracy_{ref}']:.1%} → {m['accuracy']:.1%} | "
                     f"{m['accuracy'] - m[f'accuracy_{ref}']:+.1%} [{al:+.1%}, {ah:+.1%}] | {m['p_accuracy']:.2g} |{extra} "
                     f"{m[f'gold_{ref}']:.3f} → {m['gold']:.3f} | {m['gold'] - m[f'gold_{ref}']:+.3f} [{gl:+.3f}, {gh:+.3f}] | "
                     f"{m['p_gold']:.2g} | {fmt(m.get('kl', ''))} | {fmt(m.get('entropy', ''))} | {fmt(m.get('length', ''))} | "
                     f"{m.get('cells_worse', '')} |")
    return "\n".join(lines)


ENVIRONMENT = "environment.json"


def write_environment(run: Path) -> None:
    """What the report card opens with, as of this invocation of the run: date, commit, machine, torch, code size."""
    import platform
    import subprocess

    import torch

    from pocketchat.hardware import machine_description

    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lines = sum(len(f.read_text().splitlines()) for f in source.rglob("*.py"))
    atomic_write_json(run / ENVIRONMENT, {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit or "not a git checkout",
        "machine": machine_description(), "python": platform.python_version(), "torch": torch.__version__,
        "code_lines": lines})


def environment_lines(run: Path, report: dict) -> list[str]:
    """The report card's opening list: when, which code, on what, and how big the models are."""
    path = run / ENVIRONMENT
    env = json.loads(path.read_text()) if path.is_file() else {}
    out = [f"- {k}: {env[k]}" for k in ("date", "commit", "machine", "torch") if k in env]
    if "code_lines" in env:
        out.append(f"- code: {env['code_lines']:,} lines of Python in pocketchat/")
    params = {stage: r["metrics"]["parameters"] for stage, r in report.items()
              if isinstance(r, dict) and "parameters" in r.get("metrics", {})}
    out += [f"- parameters ({STAGE_TITLES.get(stage, stage).lower()}): {n:,}" for stage, n in params.items()]
    return out


def render(run: str | Path) -> Path:
    """Write RUN/report.md (and plots) from RUN/report.json; returns the Markdown path."""
    run = Path(run)
    report = read_report(run)
    lines = [f"# pocketchat report card: `{run.name}`", ""]
    total = sum(r.get("seconds", 0) for r in report.values() if isinstance(r, dict))
    lines += [*environment_lines(run, report), f"- wall time: {total / 60:.1f} minutes", "",
              "| stage | time | peak memory | key metrics |", "|---|---|---|---|"]
    for stage, r in report.items():
        keys = ", ".join(f"{k} {fmt(v)}" for k, v in r.get("metrics", {}).items() if not isinstance(v, (list, dict)))
        memory = f"{r['peak_rss_mib'] / 1024:.1f} GiB" if "peak_rss_mib" in r else ""
        lines.append(f"| {STAGE_TITLES.get(stage, stage)} | {r.get('seconds', 0) / 60:.1f} min | {memory} | {keys} |")
    table = alignment_table(report)
    if table:
        temperature = next((r["metrics"]["temperature"] for r in report.values() if "temperature" in r.get("metrics", {})), 1.0)
        how = ("one sample each at temperature 1 with the same seed for both models" if temperature == 1.0
               else f"one completion each at temperature {temperature:g}" + (" (greedy)" if temperature == 0 else ""))
        lines += ["", "## Alignment: SFT vs PPO vs GRPO vs DPO", "",
                  "Each model against its baseline on the same held-out instances of the task/style cells alignment "
                  "worked on (the \"report\" part of the test split; the shipped model was chosen on the disjoint "
                  f"\"select\" part), {how}. Gold is the programmatic labeler's "
                  "score in [0, 1] (correct, then format, ended, polite, concise). p: McNemar's exact test for accuracy, "
                  "the paired t-test for gold, both two-sided.", "", table]
    for stage, r in sorted(report.items(), key=lambda item: list(STAGE_TITLES).index(item[0]) if item[0] in STAGE_TITLES else 99):
        lines += ["", f"## {STAGE_TITLES.get(stage, stage)}", ""]
        if r.get("path"):
            lines.append(f"Output: `{r['path']}`")
        if r.get("table"):
            lines += ["", r["table"]]
        for sample in r.get("samples", []):
            lines += ["", "```", sample.strip(), "```"]
        plot = plot_curves(run, stage, Path(r.get("path", run / stage)), PLOTS.get(stage, []), STAGE_TITLES.get(stage, stage),
                           RIGHT_AXIS.get(stage, ()))
        if plot:
            lines += ["", f"![{stage}]({plot})"]
    path = run / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
