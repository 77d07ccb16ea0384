"""MoCo through the trainer: k-NN rows, a bit-identical resume with the queue and the key encoder, the
encoder's export, a linear probe of it, and bad settings named."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convattn.train import Interrupted, TrainConfig, evaluate_weights, train
from convattn.train.checkpoint import load_checkpoint


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(model="resnet_tiny", data="shapes", n_train=64, epochs=2, batch_size=16, out=str(out),
                threads=1, method="moco", moco_options={"queue_size": 32, "dim": 8})  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_moco_resumes_bit_identically_queue_and_key_encoder_included(tmp_path):
    full = train(_cfg(tmp_path / "full", epochs=3), log=lambda s: None)
    assert "test_knn_acc" in full.history[-1] and "test_acc" not in full.history[-1]
    cfg = _cfg(tmp_path / "cut", epochs=3)
    calls = {"n": 0}

    def log(line: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted, match="epoch 2, batch 1"):
        train(cfg, log=log)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert {"queue", "queue_ptr"} <= set(state) and any(k.startswith("encoder_k.") for k in state)
    assert int(state["queue_ptr"]) == (5 * 16) % 32  # 4 steps of epoch 1 and 1 of epoch 2
    train(cfg, resume=True, log=lambda s: None)
    a, b = (load_file(str(tmp_path / f / "model.safetensors")) for f in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("head.") for k in a)  # the encoder, without its projection
    for name in ("full", "cut"):
        ckpt = load_checkpoint(tmp_path / name / "checkpoint.pt")["model"]
        assert torch.equal(
            ckpt["queue"], load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]["queue"]
        )
    with pytest.raises(ValueError, match="holds a MoCo encoder without a classifier"):
        evaluate_weights(tmp_path / "full")


def test_moco_resumes_bit_identically_after_a_real_kill(tmp_path):
    """SIGKILL (no warning, no checkpoint of its own) once a checkpoint exists; the resumed run ends with
    the uninterrupted one's encoder, key encoder and queue, to the bit."""
    import subprocess
    import sys
    import time

    args = ["train", "--model", "resnet_tiny", "--data", "shapes", "--n-train", "256", "--epochs", "8",
            "--batch-size", "32", "--threads", "1", "--method", "moco", "--moco", "queue_size=64",
            "--moco", "dim=8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "convattn"]
    subprocess.run([*cli, *args, "--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    victim = subprocess.Popen([*cli, *args, "--out", str(tmp_path / "cut")], env=env, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # somewhere inside a later epoch, or its save
    victim.kill()
    victim.wait()
    assert victim.returncode != 0, "the run finished before it could be killed"
    done = subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "cut"), "--resume"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    full, cut = (load_checkpoint(tmp_path / f / "checkpoint.pt")["model"] for f in ("full", "cut"))
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full), "weights or queue"


def test_a_linear_probe_trains_the_head_alone_and_keeps_the_encoders_statistics(tmp_path):
    train(_cfg(tmp_path / "moco", epochs=1), log=lambda s: None)
    probe = _cfg(tmp_path / "probe", method="supervised", moco_options={}, init_from=str(tmp_path / "moco"),
                 train_only="head", lr=1e-2)  # fmt: skip
    train(probe, log=lambda s: None)
    encoder = load_file(str(tmp_path / "moco" / "model.safetensors"))
    probed = load_file(str(tmp_path / "probe" / "model.safetensors"))
    for k, v in encoder.items():  # weights and batch-norm statistics alike, to the bit
        assert torch.equal(probed[k], v), k
    assert {"head.weight", "head.bias"} <= set(probed)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"method": "supervised"}, "moco_options apply to method='moco' only"),
        ({"moco_options": {"queue_size": 30}}, r"queue_size=30 must be a multiple of the batch \(16\)"),
        ({"moco_options": {"temperature": 0}}, "temperature τ must be > 0"),
        ({"moco_options": {"momentum": 1.0}}, r"momentum m must be in \[0, 1\)"),
        ({"train_only": "classifier"}, "train_only='classifier' names no parameter"),
        (
            {"model": "detr_tiny", "data": "detect_shapes"},
            "pre-trains a classifier's encoder, not a detector",
        ),
    ],
)
def test_bad_moco_runs_are_named_and_leave_no_folder(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        train(_cfg(tmp_path / "run", **kwargs), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_moco_trains_under_torchrun_with_the_batch_shuffle_across_processes(tmp_path):
    import subprocess
    import sys

    args = ["train", "--model", "resnet_tiny", "--data", "shapes", "--n-train", "64", "--epochs", "1",
            "--batch-size", "16", "--threads", "1", "--method", "moco", "--moco", "queue_size=32",
            "--moco", "dim=8", "--out", str(tmp_path / "two")]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*torchrun, "-m", "convattn", *args], env=env, capture_output=True, timeout=300)
    assert two.returncode == 0, two.stderr.decode()[-8000:]  # every rank's error, not only the agent's
    assert "k-NN accuracy" in two.stdout.decode()
    state = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]
    assert int(state["queue_ptr"]) == 0  # 4 global steps of 16 keys (both processes' 8) in a queue of 32
    assert torch.isclose(state["queue"].norm(dim=0), torch.ones(32)).all()
