"""Writes that a crash cannot leave half done: single files, and checkpoints of many files published at once.

Low in the house (it imports nothing of pocketchat), so the model, the stages and the report all share it.

A run folder stays an ordinary model folder (`config.json`, `model.safetensors`, tokenizer files,
`checkpoint.pt`, ...), but each of those names is a symlink into `checkpoints/current/`, and `current` is a
symlink to the complete folder of one step:

    RUN/config.json -> checkpoints/current/config.json
    RUN/checkpoints/current -> step-000300
    RUN/checkpoints/step-000300/{checkpoint.pt, config.json, model.safetensors, ...}

A save writes a new step folder beside the current one, fsyncs it, and swaps `current` with one rename, so a
SIGKILL at any moment leaves the old checkpoint or the new one, each whole. What a killed save leaves behind
(a step folder `current` does not name, a `.NAME.tmpPID` file) is removed by `recover`, which every save and
every resume runs first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

CHECKPOINTS = "checkpoints"
CURRENT = "current"
STEP_PREFIX = "step-"
_TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temporary names


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: a crash never leaves a half-written file."""
    path = Path(path)
    tmp = _temp_name(path)
    write(str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def publish_checkpoint(folder: str | os.PathLike, step: int, write: Callable[[Path], None]) -> None:
    """write(dir) fills a fresh step folder; it then becomes `folder`'s checkpoint in one atomic rename."""
    folder = Path(folder)
    recover(folder)
    current = folder / CHECKPOINTS / CURRENT
    name = f"{STEP_PREFIX}{step:06d}"
    if current.is_symlink() and os.readlink(current) == name:  # saving the current step again (a finished run resumed)
        name += ".1"
    stage = current.with_name(name)  # recover() removed any folder of that name a killed save left
    stage.mkdir()
    write(stage)
    for path in stage.rglob("*"):  # not everything write() calls fsyncs (tokenizer files): do it here
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(stage)
    # Links for names the run folder lacks go in before the swap: they dangle until `current` exists or holds
    # them, so for a first checkpoint the swap alone makes the whole folder appear.
    new_names = [n for n in os.listdir(stage) if not os.path.lexists(folder / n)]
    for name in new_names:
        os.symlink(f"{CHECKPOINTS}/{CURRENT}/{name}", folder / name)
    if new_names:
        _fsync_dir(folder)
    tmp = _temp_name(current)
    os.symlink(stage.name, tmp)
    os.replace(tmp, current)  # the commit
    _fsync_dir(current.parent)
    recover(folder)  # drops the previous step folder and links the names that were plain files


def recover(folder: str | os.PathLike) -> None:
    """Bring a run folder a save was killed in back to its current checkpoint, with nothing left over.

    Removes step folders that `current` does not name and temporary files; makes every file of the current
    checkpoint visible in the run folder (a plain file of that name, from a run saved before checkpoints were
    folders, gives way to the link) and drops links to files it no longer has."""
    folder = Path(folder)
    checkpoints = folder / CHECKPOINTS
    checkpoints.mkdir(parents=True, exist_ok=True)
    current = checkpoints / CURRENT
    target = os.readlink(current) if current.is_symlink() else None
    for entry in checkpoints.iterdir():
        if entry.name.startswith(STEP_PREFIX) and entry.name != target:
            shutil.rmtree(entry)
        elif _TEMP_NAME.match(entry.name):
            entry.unlink()
    for entry in folder.iterdir():
        if _TEMP_NAME.match(entry.name) and not entry.is_dir():
            entry.unlink()
    if target is None:
        return
    names = set(os.listdir(current))
    for name in names:
        link = f"{CHECKPOINTS}/{CURRENT}/{name}"
        path = folder / name
        if not (path.is_symlink() and os.readlink(path) == link):
            tmp = _temp_name(path)
            os.symlink(link, tmp)
            os.replace(tmp, path)
    prefix = f"{CHECKPOINTS}/{CURRENT}/"
    for entry in folder.iterdir():
        if entry.is_symlink() and os.readlink(entry).startswith(prefix) and entry.name not in names:
            entry.unlink()


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
