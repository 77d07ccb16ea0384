"""The trainer: learning, bit-identical resume after a real kill, DDP equivalence, and the run folder."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from convattn.train import Diverged, Interrupted, TrainConfig, evaluate_weights, read_history, train
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
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [*torchrun, "-m", "convattn", *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True
    )
    assert two.returncode == 0, two.stderr.decode()[-8000:]  # every rank's error, not only the agent's
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
        ({"lr": math.inf}, "lr must be a finite number, got lr=inf"),
        ({"lr": math.nan}, "lr=nan"),
        ({"weight_decay": math.nan}, "weight_decay=nan"),
        ({"weight_decay": math.inf}, "weight_decay=inf"),
        ({"clip_grad": math.nan}, "clip_grad=nan"),
        ({"position_lr_scale": math.inf}, "position_lr_scale=inf"),
        ({"momentum": 5.0}, r"momentum \(AdamW: beta1\) must be in \[0, 1\), got momentum=5.0"),
        ({"momentum": 1}, "momentum=1"),
        ({"crop_pad": -7}, "crop_pad=-7"),
    ],
)
def test_bad_configs_are_named(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        _cfg(tmp_path, **kwargs)


def test_weight_decay_spares_norms_biases_and_attention_centres():
    from convattn.models.registry import create_model
    from convattn.train.loop import _param_groups

    model = create_model("attention_net_tiny")
    decay, rest, positions = _param_groups(model, 0.1, 7.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in positions["params"]} == {"centres"}
    assert all(p.ndim > 1 and not names[id(p)].endswith(("centres", "spreads")) for p in decay["params"])
    assert all(names[id(p)].endswith(("bias", "weight", "spreads")) for p in rest["params"])
    assert any(names[id(p)].endswith("spreads") for p in rest["params"])
    assert (decay["weight_decay"], rest["weight_decay"], positions["weight_decay"]) == (0.1, 0.0, 0.0)
    assert (decay["lr_scale"], rest["lr_scale"], positions["lr_scale"]) == (1.0, 1.0, 7.0)
    n = len(decay["params"]) + len(rest["params"]) + len(positions["params"])
    assert n == len(list(model.parameters()))
    assert len(_param_groups(create_model("cnn_tiny"), 0.1, 7.0)) == 2  # no centres: no empty group


def test_position_lr_scale_moves_the_centres_that_much_faster(tmp_path):
    """Adam's first steps move every parameter by about its rate: the centres' travel scales with it."""
    from convattn.study.sections.learns_conv import initial_model
    from convattn.train import load_weights

    travel = {}
    for scale in (1.0, 10.0):
        cfg = _cfg(tmp_path / f"s{scale}", model="attention_net_tiny", data="shapes", n_train=64,
                   epochs=1, lr=1e-3, warmup=0.0, position_lr_scale=scale)  # fmt: skip
        train(cfg)
        start = dict(initial_model(cfg).named_parameters())
        trained, _ = load_weights(cfg.out)
        moved = {n: float((p - start[n]).abs().max().detach()) for n, p in trained.named_parameters()}
        travel[scale] = (max(v for n, v in moved.items() if n.endswith("centres")),
                         max(v for n, v in moved.items() if n.endswith("ffn_in.weight")))  # fmt: skip
    (c1, w1), (c10, w10) = travel[1.0], travel[10.0]
    assert 5 < c10 / c1 < 15  # one epoch of 1 step: the centres moved ~10x as far
    assert 0.5 < w10 / w1 < 2  # and the other weights about as far as before


NUMERIC_FIELDS = [
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup", "label_smoothing", "clip_grad",
    "crop_pad", "seed", "threads", "data_seed", "eval_every", "n_train", "holdout", "position_lr_scale",
]  # fmt: skip


def test_the_numeric_fields_are_all_listed():
    from dataclasses import fields

    hints = {f.name: f.type for f in fields(TrainConfig)}
    assert sorted(n for n, t in hints.items() if t in ("int", "float")) == sorted(NUMERIC_FIELDS)


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_no_number(tmp_path, name, value):
    with pytest.raises(TypeError, match=rf"{name} must be .*, got {name}={value}"):
        _cfg(tmp_path, **{name: value})


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": 2.0}, "epochs must be an int"),
        ({"lr": "0.1"}, "lr must be a number"),
        ({"flip": 1}, "flip must be True or False"),
        ({"model_options": [("dropout", 0)]}, "model_options must be a dict"),
        ({"data": None}, "data must be a string"),
    ],
)
def test_wrong_types_are_named(tmp_path, kwargs, words):
    with pytest.raises(TypeError, match=words):
        _cfg(tmp_path, **kwargs)


def test_ints_still_serve_as_floats_and_the_docstring_lists_every_field(tmp_path):
    from dataclasses import fields

    assert _cfg(tmp_path, lr=1, clip_grad=2).lr == 1
    for f in fields(TrainConfig):
        assert f.metadata["help"] and f"        {f.name}: {f.metadata['help']}." in TrainConfig.__doc__


def test_warmup_cosine_rises_linearly_then_falls_to_the_floor():
    from convattn.train.schedule import warmup_cosine

    lrs = [warmup_cosine(s, 100, 10, 2.0, 0.5) for s in range(100)]
    assert lrs[:10] == [2.0 * (s + 1) / 10 for s in range(10)]  # linear warm-up to the peak
    assert lrs[10] == 2.0 and all(a > b for a, b in itertools.pairwise(lrs[10:]))
    assert warmup_cosine(100, 100, 10, 2.0, 0.5) == 0.5 == warmup_cosine(500, 100, 10, 2.0, 0.5)
    assert warmup_cosine(55, 100, 10, 2.0, 0.5) == pytest.approx(1.25)  # half-way: the mean of both
    assert warmup_cosine(0, 100, 0, 1.0) == 1.0  # no warm-up: starts at the peak


def test_lr_at_is_the_formula_the_trainer_always_used():
    """Bit for bit (==) the schedule of the runs made before warmup_cosine existed."""
    import math

    from convattn.train import lr_at

    def before(step: int, total: int, cfg: TrainConfig) -> float:
        warm = int(cfg.warmup * total)
        if step < warm:
            return cfg.lr * (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    for warmup, lr, total in [(0.0, 2e-3, 97), (0.05, 2e-3, 1000), (0.1, 0.1, 333), (0.5, 3e-4, 11)]:
        cfg = TrainConfig(model="cnn_tiny", warmup=warmup, lr=lr)
        assert [lr_at(s, total, cfg) for s in range(total + 2)] == [
            before(s, total, cfg) for s in range(total + 2)
        ]


def test_one_epoch_stops_between_batches_and_the_rest_continues_it_exactly():
    """train_one_epoch cut after 3 batches and continued from its state equals one uncut epoch."""
    from convattn.data import batches, load
    from convattn.models.registry import create_model
    from convattn.train.engine import EpochState, train_one_epoch

    data = load("digits", "train")

    def run(cut: int | None) -> tuple[dict[str, torch.Tensor], EpochState]:
        torch.manual_seed(0)
        model = create_model("cnn_tiny", num_classes=10, in_chans=1, image_size=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        state = EpochState()
        while True:
            stream = batches(data, 64, seed=0, epoch=0, drop_last=True, start=state.batch)
            stopped = train_one_epoch(
                model, opt, stream, state, lr=lambda s: 0.05, stop=lambda: state.batch == cut
            )
            if not stopped:
                return model.state_dict(), state

    (whole, a), (cut, b) = run(None), run(3)
    assert a == b and a.batch == a.step == len(data) // 64 and a.seen == 64 * a.batch
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


# -- n_train in the trainer --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["n_train", "holdout"])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_train_config_subset_sizes_must_be_ints_at_least_0(field, bad):
    with pytest.raises((TypeError, ValueError), match=field):
        TrainConfig(model="cnn_tiny", **{field: bad})


@pytest.mark.parametrize(("field", "value"), [("n_train", 144), ("holdout", 200)])
def test_config_json_without_a_newer_field_still_loads(tmp_path, field, value):
    cfg = TrainConfig(model="cnn_tiny", **{field: value})
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    raw = json.loads(TrainConfig(model="cnn_tiny").to_json())
    del raw["holdout"], raw["n_train"]  # a config.json written before either field existed
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old = TrainConfig.load(tmp_path / "config.json")
    assert (old.holdout, old.n_train) == (0, 0) and not old.differences(TrainConfig(model="cnn_tiny"))
    assert old.differences(cfg) == [f"{field}: 0 != {value}"]


@pytest.mark.parametrize(("data", "n_train"), [("digits", 72), ("shapes", 64)])
def test_the_trainer_trains_on_n_train_images_and_its_export_evaluates_alike(tmp_path, data, n_train):
    cfg = TrainConfig(model="cnn_tiny", data=data, epochs=2, out=str(tmp_path), n_train=n_train, threads=1)
    result = train(cfg, log=lambda s: None)
    assert [h["step"] for h in result.history] == [1, 2]  # one batch of 64 per epoch
    assert TrainConfig.load(tmp_path / "config.json").n_train == n_train
    # The export remembers n_train: a generated set's test split is normalised as during training.
    scores = evaluate_weights(tmp_path)
    assert scores["test_acc"] == result.test_acc and scores["test_loss"] == pytest.approx(result.test_loss)


# -- holdout: a validation split instead of the test split -------------------------------------------

ROW_KEYS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
    "images_per_s",
]


def test_without_holdout_the_history_keeps_its_keys_and_adds_the_final_train_accuracy(tmp_path):
    from convattn.data import load
    from convattn.train import evaluate, load_weights

    cfg = _cfg(tmp_path, model="cnn_tiny", epochs=2, eval_every=2)
    history = train(cfg, log=lambda s: None).history
    assert [list(r) for r in history] == [ROW_KEYS, [*ROW_KEYS, "train_eval_acc"]]
    assert history[0]["test_acc"] is None and 0 < history[1]["test_acc"] <= 1
    # The final model in eval mode on every training image, without augmentation.
    model, _ = load_weights(tmp_path)
    assert history[1]["train_eval_acc"] == evaluate(model, load("digits", "train"))[0]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == [*ROW_KEYS, "train_eval_acc"] and lines[1].endswith(",")


@pytest.mark.parametrize(("data", "n_train", "holdout"), [("digits", 0, 288), ("shapes", 64, 32)])
def test_a_holdout_run_validates_on_it_and_never_reads_the_test_split(
    tmp_path, monkeypatch, data, n_train, holdout
):
    import convattn.train.loop as loop_module
    from convattn.data import load
    from convattn.train import evaluate, load_weights

    asked: list[str] = []

    def no_test(spec, split, **kw):
        asked.append(split)
        if split == "test":
            raise AssertionError("a run with a holdout loaded the test split")
        return load(spec, split, **kw)

    monkeypatch.setattr(loop_module, "load", no_test)
    cfg = _cfg(tmp_path, model="cnn_tiny", data=data, epochs=2, n_train=n_train, holdout=holdout)
    result = train(cfg, log=lambda s: None)
    monkeypatch.undo()
    assert "test" not in asked and "val" in asked
    keys = [k.replace("test", "val") for k in ROW_KEYS]
    assert [list(r) for r in result.history] == [keys, [*keys, "train_eval_acc"]]
    options = {"seed": 0, "n_train": n_train or None, "holdout": holdout}
    trained_on, val = load(data, "train", **options), load(data, "val", **options)
    assert len(trained_on) == (n_train or 1438 - holdout) and len(val) == holdout
    steps = len(trained_on) // 64
    assert [r["step"] for r in result.history] == [steps, 2 * steps]
    # The history's numbers are the final model's on the validation split and on its training images.
    model, meta = load_weights(tmp_path)
    last = result.history[-1]
    assert (last["val_acc"], last["val_loss"]) == pytest.approx(evaluate(model, val), rel=1e-6)
    assert result.val_acc == last["val_acc"] and math.isnan(result.test_acc)  # not tested
    assert last["train_eval_acc"] == evaluate(model, trained_on)[0]
    # The export remembers the holdout: `convattn eval` tests with the normalisation of the training.
    assert meta["holdout"] == holdout and TrainConfig.load(tmp_path / "config.json").holdout == holdout
    scores = evaluate_weights(tmp_path)
    test = load(data, "test", **options)
    assert (scores["test_acc"], scores["n"]) == (evaluate(model, test)[0], len(test))
    assert test.mean == trained_on.mean != load(data, "test", seed=0, n_train=n_train or None).mean


@pytest.mark.parametrize(
    ("signum", "error"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
def test_a_second_signal_exits_at_once_and_restores_the_handlers(signum, error):
    """The first SIGINT/SIGTERM asks for a clean stop at the next batch; a second one (a stuck step, an
    impatient user) exits at once instead of being swallowed."""
    from convattn.train.loop import _StopFlag

    before = signal.getsignal(signum)

    def two_signals() -> None:
        with _StopFlag() as flag:
            os.kill(os.getpid(), signum)
            assert flag.raised  # the first: a flag, no exception
            os.kill(os.getpid(), signum)
            pytest.fail("the second signal did not interrupt")

    with pytest.raises(error) as caught:
        two_signals()
    if error is SystemExit:
        assert caught.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signum) is before


def test_short_epochs_checkpoint_at_a_bounded_cost_and_end_the_same(tmp_path, monkeypatch):
    """With saves that cost 30 ms and epochs of one step, not every epoch is saved: the first and the
    last are, the rest only once ten save-durations have passed; the weights are those of a run that
    saves every epoch, and a resume from the last checkpoint finds the finished run."""
    import convattn.train.loop as loop

    saved: list[int] = []
    real = loop.save_checkpoint

    def slow_save(path, state):
        time.sleep(0.03)
        saved.append(state["epoch"])
        real(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", slow_save)
    kw = dict(model="cnn_tiny", epochs=12, n_train=64, eval_every=12)
    train(_cfg(tmp_path / "sparse", **kw), log=lambda s: None)
    sparse = list(saved)
    saved.clear()
    monkeypatch.setattr(loop, "SAVE_RATIO", 0.0)  # the old rule: every epoch
    train(_cfg(tmp_path / "every", **kw), log=lambda s: None)
    assert saved == list(range(1, 13))
    assert sparse[0] == 1 and sparse[-1] == 12 and len(sparse) < 12
    _same_weights(tmp_path / "sparse", tmp_path / "every")
    assert load_checkpoint(tmp_path / "sparse" / "checkpoint.pt")["epoch"] == 12


def test_a_diverging_run_stops_with_its_last_good_checkpoint_and_exports_nothing(tmp_path, monkeypatch):
    """A non-finite loss stops the run before its update; the checkpoint of the last finite epoch stays."""
    import convattn.train.engine as engine

    calls, real = [0], engine.F.cross_entropy

    def poisoned(*args, **kwargs):  # finite for the first epoch (22 batches), NaN from the 25th on
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * math.nan if calls[0] >= 25 else loss

    monkeypatch.setattr(engine.F, "cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(
        Diverged, match=r"the loss is nan at batch 2 \(step 24\) of epoch 2.*--lr \(it is 0.002\)"
    ):
        train(_cfg(out, model="cnn_tiny", eval_every=5), log=lambda _: None)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "model.safetensors").exists()
    assert [row["epoch"] for row in read_history(out)] == [1]  # the files follow the checkpoint


@pytest.mark.parametrize(
    "flags", [["--lr", "1e6"], ["--lr", "inf"], ["--weight-decay", "nan"], ["--clip-grad", "nan"]]
)
def test_the_command_refuses_non_finite_settings_and_diverged_runs(tmp_path, flags):
    out = tmp_path / "x"
    done = subprocess.run(
        _cli("train", "--model", "cnn_tiny", "--epochs", "1", "--out", str(out), "--threads", "1", *flags),
        capture_output=True, text=True, env=ENV, timeout=120, check=False,
    )  # fmt: skip
    diverged = flags[1] == "1e6"  # a run that failed (1), the others refused before it started (2)
    assert done.returncode == (1 if diverged else 2), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert ("training diverged" in done.stderr) if diverged else ("finite number" in done.stderr)
    assert not (out / "model.safetensors").exists()


# -- the run folder: one writer at a time, no litter after a kill -------------------------------------

_HOLD = (
    "import sys\nfrom convattn.utils.folders import folder_lock\n"
    "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n"
)


def _quick(out: Path, **kw) -> TrainConfig:
    return _cfg(out, model="cnn_tiny", epochs=1, n_train=64, batch_size=32, **kw)


def test_a_second_process_cannot_train_into_a_folder_in_use(tmp_path, capsys):
    from convattn.cli import main

    out = tmp_path / "run"
    train(_quick(out), log=lambda s: None)  # a finished run, to be resumed
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        flags = [
            "--model",
            "cnn_tiny",
            "--epochs",
            "1",
            "--n-train",
            "64",
            "--batch-size",
            "32",
            "--threads",
            "1",
        ]
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert main(["train", *flags, "--out", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use" in err and err.count("\n") == 1
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
        # A new run into a folder another process holds (holding only its lock) is refused the same way.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(fresh)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as second:
            assert second.stdout is not None and second.stdout.readline() == "locked\n"
            assert main(["train", *flags, "--out", str(fresh)]) == 2
            assert f"{fresh} is in use" in capsys.readouterr().err
            second.kill()
        assert [p.name for p in fresh.iterdir()] == [".lock"]
    finally:
        holder.kill()  # SIGKILL: the operating system releases the lock
        holder.wait()
    assert main(["train", *flags, "--out", str(out), "--resume"]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "fresh")]) == 0  # its lock file alone is no run


def test_a_killed_writers_temporary_files_are_removed_on_the_next_start(tmp_path):
    from convattn.utils.folders import remove_stale_temporaries

    out = tmp_path / "run"
    train(_quick(out), log=lambda s: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    litter = [out / f".checkpoint.pt.tmp-{dead.pid}", out / f".metrics.jsonl.tmp-{os.getpid() + 10**7}"]
    mine = [out / "notes.tmp-1", out / ".notes", out / f".checkpoint.pt.tmp-{dead.pid}x"]  # not the pattern
    for path in litter + mine:
        path.write_bytes(b"half a file")
    train(_quick(out), resume=True, log=lambda s: None)
    assert not any(p.exists() for p in litter) and all(p.exists() for p in mine)
    # Without the folder's lock, only the files of processes that no longer run go.
    live = out / f".model.json.tmp-{os.getpid()}"
    gone = out / f".model.json.tmp-{dead.pid}"
    live.write_bytes(b"being written")
    gone.write_bytes(b"left by a kill")
    assert remove_stale_temporaries(out) == [gone] and live.exists()


def test_an_empty_evaluation_split_is_refused(tmp_path):
    from dataclasses import replace

    from convattn.data import load
    from convattn.models.registry import create_model
    from convattn.train import evaluate

    test = load("digits", "test")
    empty = replace(test, images=test.images[:0], labels=test.labels[:0])
    with pytest.raises(ValueError, match="the test split of digits holds no images"):  # not 0.0
        evaluate(create_model("cnn_tiny", in_chans=1, image_size=8), empty)
