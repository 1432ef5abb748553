"""RL: the PPO/GRPO formulas against hand-computed values, the learner agreeing with the engine, reward rising
on a toy task, exact resume, and the `pocketchat rl` command."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketchat.alignment_eval import first_scored, scored_logprobs, token_logprobs
from pocketchat.chat_format import render_prompt, tool_turn_renderer
from pocketchat.cli import main
from pocketchat.engine import Engine, SamplingParams
from pocketchat.errors import UserError
from pocketchat.model import CausalLM, ModelConfig, RewardModel
from pocketchat.tokenizer import Tokenizer
from pocketchat.train.loop import CHECKPOINT
from pocketchat.train.rl import (RLConfig, RLPrompt, RLTrainer, check_split, fit, make_rollout, model_reward,
                                 select_cells)
from pocketchat.train.rl_math import (adaptive_kl_coef, clipped_policy_loss, clipped_value_loss, gae, group_advantages,
                                      kl_estimate, update_moments)

# ---- the formulas ---------------------------------------------------------------------------------------------


def test_gae_on_a_three_step_toy():
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=0.8)
    # t=2: 1 - 0.7 = 0.3;  t=1: (0.9*0.7 - 0.6) + 0.72*0.3 = 0.246;  t=0: (0.9*0.6 - 0.5) + 0.72*0.246 = 0.21712
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.246, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.846, 1.0])


def test_gae_skips_forced_tokens_and_padding():
    # The same three actions with a forced token between the first two and padding after: identical advantages.
    rewards, values = torch.tensor([[0.0, 9.0, 0.0, 1.0, 5.0]]), torch.tensor([[0.5, 7.0, 0.6, 0.7, 3.0]])
    mask = torch.tensor([[True, False, True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.21712, 0.0, 0.246, 0.3, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.71712, 0.0, 0.846, 1.0, 0.0])


def test_kl_estimators_by_hand_and_unbiased():
    logp, ref = torch.log(torch.tensor([0.5, 0.25])), torch.log(torch.tensor([0.25, 0.5]))
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([math.log(2), -math.log(2)])
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    # Both estimate KL(p || q) without bias from samples of p; k3 is never negative.
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.5, 0.2, 0.2, 0.1]), torch.tensor([0.25, 0.25, 0.25, 0.25])
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    true_kl = (p * (p / q).log()).sum().item()
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[x], q.log()[x], kind)
        assert est.mean().item() == pytest.approx(true_kl, abs=0.005)
    assert kl_estimate(p.log()[x], q.log()[x], "k3").min() >= 0
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(logp, ref, "k2")


def test_clipped_policy_loss_and_clip_fraction():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]])
    old = torch.zeros(1, 5)
    logp = ratio.log().requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[True, True, True, True, False]])  # the last entry must not count
    loss, clip_frac = clipped_policy_loss(logp, old, adv, mask, clip=0.2)
    # per action: max(-A r, -A clip(r)) = -1.2 (clipped), -0.5, 1.1, 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4)
    assert clip_frac.item() == pytest.approx(0.5)
    loss.backward()  # clipped actions get no gradient; the others get -A r / n
    assert logp.grad.tolist()[0] == pytest.approx([0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0])


def test_clipped_value_loss():
    values, old = torch.tensor([[0.5, -0.1, 0.3]]), torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 0.0, -1.0]])
    loss, clip_frac = clipped_value_loss(values, old, returns, torch.ones(1, 3, dtype=torch.bool), clip=0.2)
    # v=0.5 -> clipped 0.2: max(0.25, 0.64); v=-0.1 inside: 0.01; v=0.3 -> 0.2: max(1.69, 1.44)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01 + 1.69) / 3)
    assert clip_frac.item() == pytest.approx(1 / 3)


def test_group_advantages_normalise_within_each_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), group_size=4)
    std = math.sqrt(0.25 * 0.75)
    assert adv.tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0, 0, 0, 0], abs=1e-5)
    assert group_advantages(torch.tensor([0.0, 1.0, 3.0, 3.0]), 2).tolist() == pytest.approx([-1, 1, 0, 0], abs=1e-5)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)


def test_adaptive_kl_controller_and_running_moments():
    assert adaptive_kl_coef(0.1, kl=12.0, target=6.0, horizon=1000, n_steps=100) == pytest.approx(0.102)  # error capped at +0.2
    assert adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=1000, n_steps=100) == pytest.approx(0.099)
    data = torch.tensor([1.0, 4.0, 2.0, 8.0, 5.0, 7.0, 3.0])
    state = (0.0, 0.0, 0.0)
    for part in (data[:2], data[2:3], data[3:]):
        state = update_moments(*state, part)
    assert state[0] == 7 and state[1] == pytest.approx(data.mean().item())
    assert state[2] / state[0] == pytest.approx(data.var(unbiased=False).item())


# ---- tiny models ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    texts = ["What is 12 + 34? Answer with just the number. 46", "the cat sat on the mat", "hello there, how are you"] * 20
    return Tokenizer.train(texts, vocab_size=300)


def tiny_lm(tok, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                                bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))


def copy_of(model: CausalLM) -> CausalLM:
    other = CausalLM(model.config)
    other.load_state_dict(model.state_dict())
    return other


def prompts(tok, questions=("hi", "tell me a story", "what now", "go")) -> list[RLPrompt]:
    return [RLPrompt(render_prompt(tok, [{"role": "user", "content": q}])) for q in questions]


def toy_cfg(**kw) -> RLConfig:
    base = dict(algo="grpo", steps=10, batch_size=16, group_size=4, minibatch_size=8, max_tokens=6, epochs=2, lr=1e-2,
                warmup_steps=0, schedule="constant", weight_decay=0.0, kl_coef=0.0, missing_eos_penalty=0.0,
                eval_every=0, save_every=0, log_every=1, dtype="float32", device="cpu")
    return RLConfig(**{**base, **kw})


def contains(tokens: set[int]):
    """The toy verifiable reward: 1 if the completion contains one of `tokens`."""
    return lambda ro: torch.tensor([float(not tokens.isdisjoint(c.token_ids)) for c in ro.completions])


def digits(tok) -> set[int]:
    """The ten digit tokens: a random model puts one in a 6-token completion ~20% of the time."""
    return {tok.encode(d)[0] for d in "0123456789"}


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- learner == engine ----------------------------------------------------------------------------------------

def test_learner_logprobs_equal_the_engines_and_forced_tokens_are_masked(tok):
    model = tiny_lm(tok).eval()
    engine = Engine(model, tok, tool_turn=tool_turn_renderer(tok))
    call = [tok.token_id("<tool_call>"), *tok.encode('{"name": "calculator", "arguments": {"expression": "2+3"}}'),
            tok.token_id("</tool_call>")]
    force_call = lambda ids, logits: (torch.arange(len(logits)) == call[len(ids)]) if len(ids) < len(call) else None
    ps = prompts(tok)
    params = [SamplingParams(max_tokens=120, logprobs=True, seed=i, tools=i == 0, logits_processor=force_call if i == 0 else None)
              for i in range(len(ps))]
    completions = engine.generate([p.ids for p in ps], params)
    assert any(completions[0].forced), "the tool call should have forced a tool turn"
    ro = make_rollout(ps, completions, tok.pad_id, "cpu")
    with torch.no_grad():
        logp = token_logprobs(model, ro.input_ids, ro.targets)
    for i, (p, c) in enumerate(zip(ps, completions)):
        span = slice(len(p.ids) - 1, len(p.ids) - 1 + len(c.token_ids))
        assert ro.targets[i, span].tolist() == c.token_ids
        assert ro.mask[i, span].tolist() == [not f for f in c.forced]
        assert ro.mask[i].sum() == len(c.token_ids) - sum(c.forced)  # nothing outside the completion
        torch.testing.assert_close(logp[i, span], torch.tensor(c.logprobs), atol=2e-5, rtol=0)


def test_scoring_from_the_first_completion_position_equals_scoring_everything(tok):
    model = tiny_lm(tok).eval()
    ps = prompts(tok)
    completions = Engine(model, tok).generate([p.ids for p in ps], SamplingParams(max_tokens=12, seed=0))
    ro = make_rollout(ps, completions, tok.pad_id, "cpu")
    first = first_scored(ro.mask)
    assert first == min(len(p.ids) for p in ps) - 1 > 0
    with torch.no_grad():
        full, part = token_logprobs(model, ro.input_ids, ro.targets), token_logprobs(model, ro.input_ids, ro.targets, first)
    assert part.shape == full.shape and not part[:, :first].any()
    torch.testing.assert_close(part[:, first:], full[:, first:], atol=1e-6, rtol=0)
    assert first_scored(torch.zeros(2, 5, dtype=torch.bool)) == 0


def test_rows_sharing_a_prompt_score_and_train_as_if_each_fed_it(tok):
    """A prompt fed once for all rows that share it gives every row the log-probs, entropies and gradients of the
    plain pass (prompts of different lengths, rows in mixed order, completions of different lengths)."""
    model = tiny_lm(tok)
    ps = [prompts(tok)[i] for i in (1, 0, 1, 3, 0, 1, 3)]
    completions = Engine(model, tok).generate([p.ids for p in ps], [SamplingParams(max_tokens=4 + 2 * i, seed=i)
                                                                    for i in range(len(ps))])
    ro = make_rollout(ps, completions, tok.pad_id, "cpu")
    width = ro.input_ids.shape[1]
    shared = ro.shared_prompts(torch.arange(len(ps)), width)
    assert len(shared.source) == 3 and ro.shared_prompts(torch.tensor([0, 1, 3]), width) is None
    results = []
    for sharing in (None, shared):
        model.zero_grad()
        logp, entropy = scored_logprobs(model, ro.input_ids, ro.targets, first_scored(ro.mask), sharing, with_entropy=True)
        (logp * ro.mask).sum().backward()
        results.append((logp * ro.mask, entropy * ro.mask, [p.grad.clone() for p in model.parameters()]))
        if sharing is not None:  # nothing scored before a row's last prompt token
            assert all(not logp[i, :len(p.ids) - 1].any() for i, p in enumerate(ps))
    (logp_a, ent_a, grad_a), (logp_b, ent_b, grad_b) = results
    torch.testing.assert_close(logp_b, logp_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=0)
    for a, b in zip(grad_a, grad_b):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_an_fp32_learner_takes_the_engines_logprobs_as_the_old_policys(tok):
    """Skipping the teacher-forced old-policy pass in fp32 changes nothing an episode computes beyond rounding."""
    policy, reward = tiny_lm(tok), contains(digits(tok))
    runs = []
    for from_engine in (True, False):
        trainer = RLTrainer(toy_cfg(kl_coef=0.1), copy_of(policy), tok, copy_of(policy), reward)
        assert trainer.old_logprobs_from_engine
        trainer.old_logprobs_from_engine = from_engine
        runs.append((trainer.step(0, prompts(tok)), trainer.policy.state_dict()))
    (a, wa), (b, wb) = runs
    for k in ("policy_loss", "kl_loss", "kl", "entropy", "logprob_gap", "grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=3e-4, rtol=0, msg=k)  # Adam steps are ~lr = 1e-2 each
    bf16 = RLTrainer(toy_cfg(dtype="bfloat16"), copy_of(policy), tok, copy_of(policy), reward)
    assert not bf16.old_logprobs_from_engine


@pytest.mark.slow  # torch.compile of the update and the decode step: ~2.5 min on 2 CPU cores
def test_compiled_rl_samples_from_the_weights_it_trains_without_recompiling(tok):
    """Under RLConfig.compile the rollout's decode step reads the live weights: after optimizer steps it still
    samples what the learner scores (the gap between their log-probs stays at float rounding), and it compiled
    once for the run."""
    policy = tiny_lm(tok)
    trainer = RLTrainer(toy_cfg(compile=True, kl_coef=0.1), policy, tok, copy_of(policy), contains(digits(tok)))
    gaps = [trainer.step(step, prompts(tok))["logprob_gap"] for step in range(3)]
    step_fn = trainer.engine._step
    gaps.append(trainer.step(3, prompts(tok))["logprob_gap"])
    assert trainer.engine._step is step_fn and max(gaps) < 1e-4, gaps


def test_reward_model_scores_each_sample_at_its_last_token(tok):
    policy = tiny_lm(tok)
    rm = RewardModel.from_causal_lm(tiny_lm(tok, seed=1)).eval()
    ps = prompts(tok)
    completions = Engine(policy, tok).generate([p.ids for p in ps], SamplingParams(max_tokens=12, seed=0))
    ro = make_rollout(ps, completions, tok.pad_id, "cpu")
    with torch.no_grad():
        got = model_reward(rm, micro=3)(ro)
        alone = [rm(torch.tensor([p.ids + c.token_ids])).item() for p, c in zip(ps, completions)]  # no padding at all
    assert got.tolist() == pytest.approx(alone, abs=1e-5)


# ---- learning -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dynamic", [False, True])
def test_grpo_learns_a_verifiable_toy_task(tok, tmp_path, dynamic):
    policy = tiny_lm(tok)
    trainer = RLTrainer(toy_cfg(dynamic_sampling=dynamic), policy, tok, copy_of(policy), contains(digits(tok)))
    fit(trainer, tmp_path, lambda step, rnd=0: prompts(tok))
    trace = [r["reward"] for r in metrics(tmp_path)]
    start, end = sum(trace[:2]) / 2, sum(trace[-3:]) / 3
    assert start < 0.35 and end > 0.6 and end - start > 0.3, trace
    last = metrics(tmp_path)[-1]
    assert last["logprob_gap"] < 1e-4 and last["kl"] > 0 and "value_loss" not in last


def test_ppo_learns_with_a_critic_and_resumes_exactly(tok, tmp_path):
    cfg = toy_cfg(algo="ppo", kl_coef=0.01, kl_target=1.0, kl_horizon=100, reward_norm="running", save_every=4)

    def trainer(crash_at=None):
        policy = tiny_lm(tok)
        reward, calls = contains(digits(tok)), [0]

        def crashing(ro):
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt
            return reward(ro)
        return RLTrainer(cfg, policy, tok, copy_of(policy), crashing, critic=RewardModel.from_causal_lm(policy))

    full = trainer()
    fit(full, tmp_path / "a", lambda step: prompts(tok))
    trace = [r["reward"] for r in metrics(tmp_path / "a")]
    assert sum(trace[:2]) / 2 < 0.3 and sum(trace[-3:]) / 3 > 0.6, trace
    assert all(r["value_loss"] >= 0 and 0 <= r["clip_frac"] <= 1 for r in metrics(tmp_path / "a"))
    assert metrics(tmp_path / "a")[-1]["kl_coef"] != pytest.approx(0.01)  # the controller moved it

    crashed = trainer(crash_at=6)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, tmp_path / "b", lambda step: prompts(tok))
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["step"] == 4
    resumed = trainer()
    fit(resumed, tmp_path / "b", lambda step: prompts(tok), resume=True)
    for (name, a), b in zip(full.learner.state_dict().items(), resumed.learner.state_dict().values()):
        assert torch.equal(a, b), name  # policy, critic, KL coefficient and reward moments
    timing = {"rollout_tokens_per_s", "update_tokens_per_s", "tokens_per_s", "episode_s"}
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]
    assert strip(metrics(tmp_path / "a")) == strip(metrics(tmp_path / "b"))


# ---- the command ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft(tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    tiny_lm(tok).save_pretrained(folder)
    tok.save(folder)
    return folder


def test_rl_command_runs_grpo_on_the_tasks_and_refuses_bad_settings(sft, tmp_path, capsys):
    out = tmp_path / "grpo"
    args = ["rl", "--algo", "grpo", "--policy", str(sft), "--reward", "task", "--out", str(out), "--preset", "smoke",
            "--steps=2", "--eval_n=0", "--max_tokens=8"]
    assert main(args) == 0
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    assert {"reward", "gold", "kl", "entropy", "length", "clip_frac", "kl_loss", "tokens_per_s"} <= set(records[0])
    assert CausalLM.from_pretrained(out).config.vocab_size == tok_size(sft)
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # a finished run resumes to nothing new
    assert [r["step"] for r in metrics(out)] == [1, 2]

    assert main(["rl", "--algo", "grpo", "--policy", str(sft), "--out", str(tmp_path / "x"), "--group_size=1"]) == 2
    assert "group_size must be >= 2" in capsys.readouterr().err
    assert main(["rl", "--algo", "ppo", "--policy", str(sft), "--reward", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_ptx_mixes_the_sft_loss_into_every_optimizer_step(sft, tmp_path):
    out = tmp_path / "grpo"
    assert main(["rl", "--algo", "grpo", "--policy", str(sft), "--reward", "task", "--out", str(out), "--preset", "smoke",
                 "--steps=2", "--eval_n=0", "--max_tokens=8", "--ptx_coef=0.5", "--ptx_batch_size=2"]) == 0
    records = metrics(out)
    assert all(r["ptx_loss"] > 0 for r in records)  # a random model's SFT loss: log(vocab) or so
    assert main(["rl", "--algo", "grpo", "--policy", str(sft), "--out", str(tmp_path / "x"), "--ptx_coef=-1"]) == 2


def test_rl_command_runs_ppo_against_a_reward_model(sft, tmp_path):
    rm_dir = tmp_path / "rm"
    RewardModel.from_causal_lm(CausalLM.from_pretrained(sft)).save_pretrained(rm_dir)
    (rm_dir / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    out = tmp_path / "ppo"
    assert main(["rl", "--algo", "ppo", "--policy", str(sft), "--reward", str(rm_dir), "--out", str(out),
                 "--preset", "smoke", "--steps=1", "--eval_n=0", "--max_tokens=8", "--reward_norm=stats",
                 "--reward_clip=3", "--missing_eos_penalty=0"]) == 0
    record = metrics(out)[0]
    assert record["score"] == pytest.approx((record["reward"] - 0.5) / 2.0, abs=1e-5)
    assert {"value_loss", "value_clip_frac", "kl_coef"} <= set(record)


def torchrun(nproc: int, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                          "-m", "pocketchat.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[:6000]


@pytest.mark.slow  # torchrun launches, ~20 s each
@pytest.mark.parametrize("algo, extra", [("ppo", ["--reward_norm=running", "--kl_target=1", "--kl_horizon=100"]),
                                         ("grpo", ["--ptx_coef=0.5", "--ptx_batch_size=2"])])
def test_two_processes_match_one_with_the_same_global_batch(sft, tmp_path, algo, extra):
    """Each rank samples and scores half of every episode and the update runs under DDP (gloo): the losses, the
    controller and the weights follow one process's with the same global batch."""
    rm_dir = tmp_path / "rm"
    RewardModel.from_causal_lm(CausalLM.from_pretrained(sft)).save_pretrained(rm_dir)  # a random RM: varied scores
    args = ["rl", "--algo", algo, "--policy", str(sft), "--reward", str(rm_dir), "--preset", "smoke", "--steps=3",
            "--eval_n=0", "--max_tokens=8", "--device=cpu", "--dtype=float32", "--lr=1e-3", *extra]
    torchrun(1, [*args, "--out", str(tmp_path / "one")])
    torchrun(2, [*args, "--out", str(tmp_path / "two")])
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == len(two) == 3
    timing = {"rollout_tokens_per_s", "update_tokens_per_s", "tokens_per_s", "episode_s"}
    for a, b in zip(one, two):
        assert set(a) == set(b)
        for k in set(a) - timing:
            # a clip fraction counts tokens past a threshold: float noise may move one of them (1/128 here)
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=0.01 if k.endswith("clip_frac") else 1e-6), (k, a, b)
    assert one[-1]["policy_loss"] != 0 and one[-1]["grad_norm"] > 0  # the update did something to agree on
    w1, w2 = CausalLM.from_pretrained(tmp_path / "one").state_dict(), CausalLM.from_pretrained(tmp_path / "two").state_dict()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4, msg=k)


def test_an_episode_that_does_not_divide_among_the_processes_is_refused():
    check_split(toy_cfg(batch_size=16, group_size=4, minibatch_size=8), 2)
    with pytest.raises(UserError, match="3 prompts per episode do not divide among the 2 processes"):
        check_split(toy_cfg(batch_size=12, group_size=4, minibatch_size=4), 2)
    with pytest.raises(UserError, match="minibatch_size \\(6\\) must be a multiple of 4"):
        check_split(toy_cfg(batch_size=16, group_size=4, minibatch_size=6), 4)


def tok_size(folder) -> int:
    return Tokenizer.load(folder).vocab_size


def test_config_errors_name_the_setting(tok):
    policy = tiny_lm(tok)
    with pytest.raises(UserError, match="batch_size 30 is not a multiple of group_size 4"):
        RLTrainer(toy_cfg(batch_size=30), policy, tok, copy_of(policy), contains({1}))
    with pytest.raises(UserError, match="algo ppo needs critic"):
        RLTrainer(toy_cfg(algo="ppo"), policy, tok, copy_of(policy), contains({1}))
    with pytest.raises(UserError, match="kl_estimator"):
        RLTrainer(toy_cfg(kl_estimator="k2"), policy, tok, copy_of(policy), contains({1}))


# ---- where the policy can learn: the pass-rate filter and dynamic sampling ----------------------------------------

def test_select_cells_keeps_the_cells_with_room_to_learn():
    rates = [{"task": "add2", "style": "tool", "pass_rate": 1.0}, {"task": "add2", "style": "direct", "pass_rate": 0.0},
             {"task": "units", "style": "direct", "pass_rate": 0.3}, {"task": "units", "style": "tool", "pass_rate": 0.9}]
    assert select_cells(rates, 0.1, 0.9) == [("units", "direct"), ("units", "tool")]
    assert select_cells(rates, 0.0, 1.0) == [(r["task"], r["style"]) for r in rates]
    with pytest.raises(UserError, match=r"no task/style cell.*add2/tool 1.00.*units/direct 0.30"):
        select_cells(rates, 0.4, 0.8)


def test_dynamic_sampling_trains_only_on_groups_that_disagree(tok):
    """Prompt "go" always scores 1 and "hi" always 0; the others score by a digit. With dynamic sampling the
    update sees only groups whose samples differ, drawn from further rounds when the first falls short."""
    has_digit = contains(digits(tok))
    fixed = {"go": 1.0, "hi": 0.0}

    def reward(ro):
        rolled = has_digit(ro)
        return torch.tensor([fixed.get(q, float(r)) for q, r in zip(questions_of(tok, ro), rolled)])

    policy = tiny_lm(tok)
    trainer = RLTrainer(toy_cfg(dynamic_sampling=True, max_rollout_rounds=4, max_tokens=12), policy, tok,
                        copy_of(policy), reward)
    seen = []
    update = trainer.update
    trainer.update = lambda step, ro, *rest: seen.append(ro) or update(step, ro, *rest)
    more = lambda rnd: prompts(tok, ("tell me a story", "what now", "go", "hi"))
    m = trainer.step(0, prompts(tok, ("go", "hi", "go", "hi")), more)
    assert m["groups_informative"] < 1 and m["rollout_rounds"] >= 2
    ro = seen[0]
    assert set(questions_of(tok, ro)) <= {"tell me a story", "what now"}
    groups = reward(ro).view(-1, 4)
    assert ((groups.max(1).values - groups.min(1).values) > 0).all()
    assert m["reward"] == pytest.approx(0.5)  # round 0 as sampled: two groups at 1, two at 0


def questions_of(tok, ro) -> list[str]:
    return [next(q for q in ("hi", "tell me a story", "what now", "go") if p.ids == prompts(tok, (q,))[0].ids)
            for p in ro.prompts]
