"""`pocketchat speedrun --preset smoke`: every stage of the recipe runs on the embedded data, the report card
holds each stage's figures, and a re-run skips what is done and redoes only what is missing."""

import json

import pytest

from pocketchat.cli import main
from pocketchat.speedrun import STAGES


@pytest.mark.slow  # the whole smoke speedrun, ~30 s
def test_smoke_speedrun_runs_every_stage_and_reruns_only_what_is_missing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["speedrun", "--preset", "smoke", "--out", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    assert list(report) == [name for name, _ in STAGES]
    assert all(r["seconds"] > 0 for r in report.values())

    m = {name: r["metrics"] for name, r in report.items()}
    assert m["pretrain"]["val_bpb"] > 0 and m["compare"]["train_pairs"] > 0 and m["compare"]["test_pairs"] > 0
    assert 0 <= m["rm"]["accuracy"] <= 1 and m["rm"]["reward_std"] > 0
    for name in ("ppo", "grpo", "dpo"):  # each aligned model against the SFT model on the same held-out instances
        assert {"accuracy", "accuracy_sft", "gold", "gold_sft", "n", "p_accuracy", "p_gold"} <= set(m[name])
        assert 0 <= m[name]["gold_sft"] <= 1 and 0 <= m[name]["gold"] <= 1 and m[name]["kl"] == m[name]["kl"]
        assert 0 <= m[name]["p_accuracy"] <= 1 and 0 <= m[name]["p_gold"] <= 1
        assert m[name]["cells_worse"] + m[name]["cells_better"] <= len(report[name]["retention"]) == 7  # the eval table
        assert m[name]["accuracy_diff_ci"][0] <= m[name]["accuracy"] - m[name]["accuracy_sft"] <= m[name]["accuracy_diff_ci"][1] + 1e-9
    probe = json.loads((run / "compare" / "probe.json").read_text())  # the cells alignment works on
    assert [(c["task"], c["style"], c["kept"]) for c in probe["cells"]] == [("add2", "direct", True)]
    assert m["ppo"]["n"] == m["grpo"]["n"] == m["dpo"]["n"] == 6  # report_n x that one cell
    assert 0 <= m["dpo"]["pref_accuracy"] <= 1
    assert {r["model"] for r in report["diversity"]["results"]} == {"base", "sft", "ppo", "grpo", "dpo"}
    assert {r["strategy"] for r in report["strategies"]["results"]} == {"direct", "cot", "sc", "tool"}
    pairs = report["strategies"]["prompt_pairs"]  # the talk's prompting claims, each paired on the same instances
    assert [(r["a"], r["b"]) for r in pairs] == [("sft, direct", "base, dialogue, 1-shot"), ("shipped, cot", "shipped, expert")]
    assert all(r["n"] == 3 and 0 <= r["p"] <= 1 and r["diff"] == r["mean_b"] - r["mean_a"] for r in pairs)
    assert "The talk's prompting claims" in (tmp_path / "run" / "report.md").read_text()
    for folder in ("base", "sft", "rm", "ppo", "grpo", "dpo"):  # every model is a Hugging Face folder
        assert (run / folder / "config.json").is_file() and (run / folder / "model.safetensors").is_file()

    card = (run / "report.md").read_text()
    assert "## Alignment: SFT vs PPO vs GRPO vs DPO" in card and "| ppo |" in card and "distinct-2" in card
    opening = card.split("| stage |")[0]  # when, which code, on what, how big, how long
    for field in ("- date: ", "- commit: ", "- machine: ", "- torch: ", "- code: ", "- wall time: "):
        assert field in opening, field
    assert f"- parameters (pretraining (base model)): {m['pretrain']['parameters']:,}" in opening
    assert m["pretrain"]["parameters"] > 0
    assert all((run / "plots" / f"{s}.png").is_file() for s in ("pretrain", "sft", "rm", "ppo", "grpo", "dpo"))
    out = capsys.readouterr().out
    assert "pocketchat chat --model" in out and "pocketchat serve --model" in out

    # A lost stage record (as after a crash during the stage) is redone; the others are skipped.
    del report["dpo"]
    (run / "report.json").write_text(json.dumps(report))
    assert main(["speedrun", "--preset", "smoke", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, skipped") == len(STAGES) - 1 and "[8/10] dpo\n" in out
    assert "dpo" in json.loads((run / "report.json").read_text())


def test_the_run_ships_the_aligned_model_only_when_it_beats_sft(tmp_path):
    from pocketchat.speedrun import final_model

    for name in ("sft", "ppo", "grpo", "dpo"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    # The choice is made on the "select" part only: the report part's figures (gold) play no role.
    select = {"ppo": 0.27, "grpo": 0.29, "dpo": 0.25}
    report = {name: {"metrics": {"select_gold": g, "select_gold_sft": 0.30, "gold": 0.9, "gold_sft": 0.1}}
              for name, g in select.items()}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert final_model(tmp_path) == "sft"
    report["grpo"]["metrics"]["select_gold"] = 0.35
    report["dpo"]["metrics"] |= {"select_gold": 0.33, "select_gold_sft": 0.20}  # the largest gain over its SFT baseline
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert final_model(tmp_path) == "dpo"
    report["dpo"]["metrics"]["cells_worse"] = 1  # it forgot something elsewhere in the eval table: it doesn't ship
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert final_model(tmp_path) == "grpo"
