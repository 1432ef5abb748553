"""`pocketchat pretrain` / `sample` end to end on a small corpus, and the CLI's clear errors."""

import json

import pytest

from pocketchat.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    verses = [f"And the {w} said unto the {v}, Go thou and {x} the {y}.\n" for w in ("king", "queen", "lord", "fool")
              for v in ("people", "servant", "prophet") for x in ("bless", "keep", "find") for y in ("land", "city", "house")]
    for i in range(30):
        (folder / f"doc{i:02d}.txt").write_text("".join(verses[i:] + verses[:i]) * 3)
    return folder


def run_args(corpus, out):
    return ["pretrain", "--preset", "smoke", "--out", str(out), f"--data={corpus}", "--steps=30", "--eval_every=15",
            "--save_every=15", "--vocab_size=300", "--seq_len=64"]


def test_pretrain_learns_writes_an_hf_folder_and_samples(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(corpus, out)) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_bpb" in r]
    assert len(evals) == 2 and evals[-1]["val_loss"] < evals[0]["val_loss"]
    train = [r["train_loss"] for r in records if "train_loss" in r]
    assert train[-1] < train[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    assert main(["sample", "--model", str(out), "--prompt", "And the king", "--max-tokens", "10", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("And the king")


def test_clear_errors_instead_of_tracebacks(corpus, tmp_path, capsys):
    cases = [
        (["pretrain", "--out", str(tmp_path / "a"), "--nonsense=3"], "unknown config key 'nonsense'"),
        (["pretrain", "--out", str(tmp_path / "a"), "--steps=ten"], "steps must be int"),
        (["pretrain", "--out", str(tmp_path / "a"), "--preset", "huge"], "unknown preset 'huge'"),
        (["pretrain", "--out", str(tmp_path / "a"), "--data", str(tmp_path / "missing")], "missing"),
        (["pretrain", "--out", str(tmp_path / "a"), "--resume"], "no checkpoint"),
        (["sample", "--model", str(tmp_path)], "not a checkpoint folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (argv, err)
    (tmp_path / "bad.toml").write_text("lr = [")
    assert main(["pretrain", "--out", str(tmp_path / "a"), "--config", str(tmp_path / "bad.toml")]) == 2
    assert "invalid TOML" in capsys.readouterr().err
