"""Checkpoints a kill cannot break: SIGKILL at any moment leaves a run folder that loads, and resume is exact.

Run as a script, this file is the training run that gets killed: `python test_checkpoint.py OUT`."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketchat.config import TrainConfig
from pocketchat.files import CHECKPOINTS, CURRENT, publish_checkpoint, recover
from pocketchat.model import CausalLM
from pocketchat.train import dist
from pocketchat.train.loop import CHECKPOINT, train

sys.path.insert(0, str(Path(__file__).parent))
from _train_worker import make_get_batch, tiny_model  # noqa: E402

STEPS = 40


def run(out: Path) -> None:
    """40 steps of the tiny model, an eval every 2 and a checkpoint (state + HF folder) after every step."""
    cfg = TrainConfig(steps=STEPS, batch_size=8, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=2, save_every=1,
                      log_every=1, dtype="float32")
    model = tiny_model()
    held_out = make_get_batch(8)(10_000, 0, 1)

    def evaluate(m: CausalLM) -> dict:
        return {"val_loss": m(held_out["input_ids"], held_out["targets"]).item()}

    def export(state: dict, path: Path) -> None:
        model.save_pretrained(path, state_dict=state)

    import torch.utils.tensorboard  # noqa: F401  (the loop's slowest import, done before the kill delays start)

    print("training", flush=True)
    train(model, cfg, out, make_get_batch(8), info=dist.setup("cpu"), evaluate=evaluate, export=export,
          resume=(out / CHECKPOINT).is_file())


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process, reference included
    with open(out.parent / f"{out.name}.log", "a") as log:  # the progress bar and any traceback
        return subprocess.Popen([sys.executable, __file__, str(out)], env=env, stdout=subprocess.PIPE, stderr=log, text=True)


def finish(out: Path) -> None:
    proc = start(out)
    proc.communicate(timeout=120)
    assert proc.returncode == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]


def loaded_step(out: Path) -> int | None:
    """The step of the checkpoint the folder holds (None before the first), checked to load as a whole."""
    if not (out / CHECKPOINT).exists():
        assert not (out / "config.json").exists(), "model files without their checkpoint"
        return None
    state = torch.load(out / CHECKPOINT, weights_only=False)
    model = CausalLM.from_pretrained(out)
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, state["model"][name]), f"model files and checkpoint.pt differ at {name}"
    return state["step"]


def leftovers(out: Path) -> list[str]:
    """Files a killed save left: step folders `current` does not name, and temporary files."""
    return [p.name for p in stale_steps(out)] + [str(p.relative_to(out)) for p in out.rglob(".*.tmp*")]


def stale_steps(out: Path) -> list[Path]:
    checkpoints = out / CHECKPOINTS
    if not checkpoints.is_dir():
        return []
    current = os.readlink(checkpoints / CURRENT) if (checkpoints / CURRENT).is_symlink() else None
    return [p for p in checkpoints.iterdir() if p.name not in (CURRENT, current)]


def wait_for_saves(out: Path, proc: subprocess.Popen, count: int, timeout: float = 60.0) -> None:
    """Return as the count-th save of this process starts (its step folder appears), or after `timeout` s."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < count and proc.poll() is None and time.monotonic() < deadline:
        seen.update(p.name for p in stale_steps(out))
        time.sleep(0.002)


def records(out: Path) -> list[dict]:
    timing = ("tokens_per_s", "mfu")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a dozen killed and resumed training processes, ~30 s
def test_sigkill_at_any_moment_leaves_a_loadable_folder_and_resume_is_exact(tmp_path):
    reference = tmp_path / "reference"
    finish(reference)
    out = tmp_path / "killed"
    rng = random.Random(0)
    steps, mid_save = [], 0
    for kill in range(8):
        proc = start(out)
        assert proc.stdout.readline() == "training\n"
        if kill % 4 == 0:  # while starting: cleaning up after the last kill, loading, the first step
            wait_for_saves(out, proc, 1, timeout=rng.uniform(0.0, 1.0))
        else:  # at a random moment of a save (one lasts ~50 ms): writing, fsyncing, swapping, removing the old
            wait_for_saves(out, proc, rng.randint(1, 4))
            time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            break  # finished before the kill
        steps.append(loaded_step(out))
        mid_save += bool(leftovers(out))
    finish(out)  # the resume that completes the run

    assert mid_save > 0, steps  # some kills did land inside a save
    assert loaded_step(out) == STEPS and leftovers(out) == []
    a, b = torch.load(reference / CHECKPOINT, weights_only=False), torch.load(out / CHECKPOINT, weights_only=False)
    for name, weight in a["model"].items():
        assert torch.equal(weight, b["model"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert records(out) == records(reference)  # every step's loss and eval once, none lost to a kill
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


def test_a_save_replaces_plain_files_of_an_older_run_and_recovery_removes_what_a_kill_left(tmp_path):
    (tmp_path / "config.json").write_text("old")  # a run folder from before checkpoints were folders
    (tmp_path / "notes.txt").write_text("mine")
    publish_checkpoint(tmp_path, 1, lambda d: [(d / n).write_text(f"{n} 1") for n in ("config.json", "a.bin")])
    publish_checkpoint(tmp_path, 2, lambda d: (d / "config.json").write_text("config.json 2"))
    assert (tmp_path / "config.json").read_text() == "config.json 2"
    assert not os.path.lexists(tmp_path / "a.bin")  # gone with the checkpoint that had it
    assert (tmp_path / "notes.txt").read_text() == "mine"

    # what a kill leaves: a half-written step folder, a pointer not yet swapped in, a file not yet renamed
    (tmp_path / CHECKPOINTS / "step-000003.x1").mkdir()
    os.symlink("step-000003.x1", tmp_path / CHECKPOINTS / ".current.tmp99")
    (tmp_path / ".model.safetensors.tmp99").write_text("half")
    recover(tmp_path)
    assert leftovers(tmp_path) == [] and (tmp_path / "config.json").read_text() == "config.json 2"


if __name__ == "__main__":
    run(Path(sys.argv[1]))
