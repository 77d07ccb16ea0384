"""The trainer: learning, bit-identical resume after a real kill, DDP equivalence, and the run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convattn.train import Interrupted, TrainConfig, evaluate_weights, train
from convattn.train.checkpoint import load_checkpoint, save_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="attention_net_tiny", data="digits", epochs=3, out=str(out), batch_size=64, threads=1)
    return TrainConfig(**{**base, **kw})


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "convattn", *args]


def test_loss_falls_and_the_export_evaluates(tmp_path):
    result = train(_cfg(tmp_path / "run", model="cnn_tiny", epochs=2), log=lambda s: None)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert (tmp_path / "run" / "metrics.csv").exists() and (tmp_path / "run" / "config.json").exists()
    scores = evaluate_weights(tmp_path / "run")
    assert scores["test_acc"] == pytest.approx(result.test_acc) and scores["n"] > 300


@pytest.mark.slow
def test_a_small_cnn_beats_90_percent_on_digits_within_a_minute(tmp_path):
    start = time.perf_counter()
    result = train(_cfg(tmp_path / "run", model="cnn_digits", epochs=15, threads=2), log=lambda s: None)
    assert result.test_acc > 0.9 and time.perf_counter() - start < 60


def test_resume_after_a_real_kill_ends_bit_identical(tmp_path):
    """Kill a training process (SIGKILL, no warning) once it has checkpointed, resume, compare."""
    args = ["train", "--model", "attention_net_tiny", "--data", "digits", "--epochs", "6", "--threads", "1"]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "full")), check=True, env=ENV, capture_output=True)
    victim = subprocess.Popen(_cli(*args, "--out", str(tmp_path / "cut")), env=ENV, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # somewhere inside the next epoch, or its save
    victim.kill()
    victim.wait()
    assert victim.returncode != 0, "the run finished before it could be killed"
    done = subprocess.run(
        _cli(*args, "--out", str(tmp_path / "cut"), "--resume"), env=ENV, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    _same_weights(tmp_path / "full", tmp_path / "cut")


def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(tmp_path):
    full = train(_cfg(tmp_path / "full"), log=lambda s: None)
    cfg = _cfg(tmp_path / "cut")
    calls = {"n": 0}

    def log(line: str) -> None:  # after the first epoch, ask the process to stop
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="epoch 2, batch 1"):
        train(cfg, log=log)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["batch"]) == (1, 1)
    resumed = train(cfg, resume=True, log=lambda s: None)
    _same_weights(tmp_path / "full", tmp_path / "cut")
    assert resumed.history == [dict(r, seconds=r2["seconds"], images_per_s=r2["images_per_s"])
                               for r, r2 in zip(full.history, resumed.history, strict=True)]  # fmt: skip


def test_ddp_on_two_processes_matches_one_process(tmp_path):
    args = ["train", "--model", "attention_net_tiny", "--set", "dropout=0", "--data", "digits",
            "--epochs", "1", "--batch-size", "64", "--threads", "1"]  # fmt: skip
    subprocess.run(_cli(*args, "--out", str(tmp_path / "one")), check=True, env=ENV, capture_output=True)
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "convattn",
    ]
    two = subprocess.run([*run, *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    wa, wb = (
        load_file(str(tmp_path / "one" / "model.safetensors")),
        load_file(str(tmp_path / "two" / "model.safetensors")),
    )
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_a_folder_holding_a_run_is_never_overwritten(tmp_path):
    train(_cfg(tmp_path / "run", model="cnn_tiny", epochs=1), log=lambda s: None)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds files"):
        train(_cfg(tmp_path / "run", model="cnn_tiny", epochs=1), log=lambda s: None)
    with pytest.raises(ValueError, match=r"holds a different run.*model"):
        train(_cfg(tmp_path / "run", model="attention_net_tiny", epochs=1), resume=True, log=lambda s: None)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable convattn checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a convattn checkpoint"):
        load_checkpoint(bad)


def test_a_save_that_dies_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("killed mid-save")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="mid-save"):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"optimizer": "lion"}, "optimizer='lion'"),
        ({"warmup": 1.5}, "warmup=1.5"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"device": "tpu"}, "device='tpu'"),
    ],
)
def test_bad_configs_are_named(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        _cfg(tmp_path, **kwargs)


def test_weight_decay_spares_norms_biases_and_attention_centres():
    from convattn.models.registry import create_model
    from convattn.train.loop import _param_groups

    model = create_model("attention_net_tiny")
    decay, rest = _param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for p in rest["params"]}
    assert {n for n in spared if "centres" in n or "spreads" in n}  # the quadratic encoding's own
    assert all(p.ndim > 1 and not names[id(p)].endswith(("centres", "spreads")) for p in decay["params"])
    assert all(names[id(p)].endswith(("bias", "weight", "centres", "spreads")) for p in rest["params"])
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
