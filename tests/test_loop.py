"""The shared training loop: exact resume, schedule, parameter groups, gradient accumulation, DDP and FSDP."""

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketchat.config import TrainConfig, apply_overrides
from pocketchat.errors import UserError
from pocketchat.train import dist
from pocketchat.train.loop import CHECKPOINT, lr_factor, train
from pocketchat.train.optim import orthogonalize, param_groups

sys.path.insert(0, str(Path(__file__).parent))
from _train_worker import make_get_batch, tiny_model  # noqa: E402

CPU = dist.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def cfg(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=8, seq_len=16, lr=1e-2, warmup_steps=2, eval_every=0, save_every=4,
                log_every=1, dtype="float32")
    return TrainConfig(**{**base, **kw})


def losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_crash_is_bitwise_identical(tmp_path, optimizer):
    c = cfg(optimizer=optimizer)
    full = tiny_model()
    train(full, c, tmp_path / "a", make_get_batch(8), info=CPU)

    crashed = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train(crashed, c, tmp_path / "b", make_get_batch(8, crash_at=6), info=CPU)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 4
    resumed = tiny_model()
    train(resumed, c, tmp_path / "b", make_get_batch(8), info=CPU, resume=True)

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # the log has no duplicated or missing steps


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls(tmp_path, optimizer):
    train(tiny_model(), cfg(steps=60, save_every=0, optimizer=optimizer), tmp_path, make_get_batch(8), info=CPU)
    trace = losses(tmp_path)
    assert trace[-1] < 0.5 * trace[0]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a, b = tiny_model(), tiny_model()
    train(a, cfg(steps=3), tmp_path / "a", make_get_batch(8), info=CPU)
    train(b, cfg(steps=3, micro_batch_size=2), tmp_path / "b", make_get_batch(8), info=CPU)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.allclose(x, y, atol=1e-5)


def test_schedule_warmup_then_cosine_to_floor():
    c = cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, c) == pytest.approx(0.1)
    assert lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(55, c) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, c) == pytest.approx(0.1)
    lin = cfg(steps=100, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(50, lin) == pytest.approx(0.5)


def test_no_weight_decay_on_norms_and_embeddings():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("proj" in names[i] for i in decayed)
    assert id(model.model.embed_tokens.weight) not in decayed  # tied with lm_head: both undecayed
    assert all(id(model.model.layers[0].input_layernorm.weight) != i for i in decayed)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_model()
    groups = param_groups(model, 0.1, muon=True)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in groups if g["muon"] for p in g["params"]]
    adam = [names[id(p)] for g in groups if not g["muon"] for p in g["params"]]
    assert muon and all(n.endswith("proj.weight") for n in muon)  # attention and MLP matrices only
    assert "model.embed_tokens.weight" in adam and any("norm" in n for n in adam)
    assert len(muon) + len(adam) == len(names)


def test_orthogonalize_flattens_the_spectrum():
    g = torch.randn(32, 96) * torch.logspace(-2, 1, 96)  # singular values spread over 3 orders of magnitude
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.min() > 0.5 and s.max() < 1.3


def test_config_rejects_an_unknown_choice():
    with pytest.raises(UserError, match=re.escape("optimizer must be one of adamw | muon")):
        apply_overrides(TrainConfig(), {"optimizer": "sgd"}, "command line")
    with pytest.raises(UserError, match="schedule"):
        apply_overrides(TrainConfig(), {"schedule": "cosin"}, "command line")


def test_resume_refuses_a_changed_batch(tmp_path):
    train(tiny_model(), cfg(steps=4), tmp_path, make_get_batch(8), info=CPU)
    with pytest.raises(UserError, match="batch_size"):
        train(tiny_model(), cfg(steps=8, batch_size=4), tmp_path, make_get_batch(4), info=CPU, resume=True)


def torchrun(out: Path, mode: str, nproc: int, micro: int = 0) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                    str(Path(__file__).parent / "_train_worker.py"), str(out), mode, str(micro)],
                   check=True, env=env, capture_output=True, timeout=240)


@pytest.mark.slow  # torchrun launches, ~10 s each
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, mode):
    torchrun(tmp_path / "one", "ddp", 1)
    torchrun(tmp_path / "two", mode, 2, micro=2)  # 2 ranks x 2 micro-batches x 2 sequences = 8
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(one, two)), (one, two)
    w1 = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=False)["model"]
    w2 = torch.load(tmp_path / "two" / CHECKPOINT, weights_only=False)["model"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


@pytest.mark.slow  # torch.compile, ~15 s
def test_compiled_training_step_matches_eager(tmp_path):
    train(tiny_model(), cfg(save_every=0), tmp_path / "eager", make_get_batch(8), info=CPU)
    train(tiny_model(), cfg(save_every=0, compile=True), tmp_path / "compiled", make_get_batch(8), info=CPU)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


def test_compile_without_a_cpp_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="C\\+\\+ compiler.*no-such-compiler"):
        train(tiny_model(), cfg(compile=True), tmp_path, make_get_batch(8), info=CPU)
