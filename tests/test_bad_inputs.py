"""A catalogue of bad inputs, refused the same way everywhere.

The command line exits 2 with one line on stderr that names the bad value (130 for Ctrl-C), never a
traceback; the library raises ValueError or TypeError naming it (FileNotFoundError for a missing path).
Each row is one case: the argv (or a call of the library), what is expected, and the words the message
must hold. "{tmp}" in either stands for the test's own folder, where a row's `setup` prepares files.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import convattn
from convattn import functional as F
from convattn.cli import main

Setup = Callable[[Path, pytest.FixtureRequest], None]


@dataclass(frozen=True)
class Case:
    id: str
    call: list[str] | Callable[[Path], object]  # argv of `convattn`, or a call of the library
    expect: int | type[Exception]  # exit code, or exception type
    words: tuple[str, ...]  # must all appear in the message
    setup: Setup | None = None


# -- what some cases need in their folder -------------------------------------------------------------

RUN = ["--epochs", "1", "--n-train", "64", "--batch-size", "32", "--threads", "1"]  # a ~1 s training run


def _png(path: Path, colour: tuple[int, int, int] = (0, 0, 255)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int) -> None:
    """A PNG whose header claims side x side RGB pixels over a few bytes of data: decoding it would
    take side² · 3 bytes of memory."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _classes(root: Path, per_class: int, names: tuple[str, ...] = ("cat", "dog")) -> None:
    for k, name in enumerate(names):
        for i in range(per_class):
            _png(root / name / f"{i}.png", (40 * i, 100 * k, 7))


def _file(tmp: Path, request: pytest.FixtureRequest) -> None:
    (tmp / "file.txt").write_text("mine\n")


def _read_only(tmp: Path, request: pytest.FixtureRequest) -> None:
    """tmp/ro, a folder nobody may write into (root may: for root, os.access says no, as it does on a
    read-only file system)."""
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    request.addfinalizer(lambda: folder.chmod(0o755))
    if os.geteuid() == 0:
        real = os.access

        def access(path: object, mode: int, *args: object, **kwargs: object) -> bool:
            if mode & os.W_OK and Path(str(path)).absolute().is_relative_to(folder):
                return False
            return real(path, mode, *args, **kwargs)  # type: ignore[arg-type]

        request.getfixturevalue("monkeypatch").setattr(os, "access", access)


def _no_cuda(tmp: Path, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("monkeypatch").setattr(torch.cuda, "is_available", lambda: False)


def _bomb(tmp: Path, request: pytest.FixtureRequest) -> None:
    _classes(tmp / "imgs", 5)
    _bomb_png(tmp / "imgs" / "cat" / "huge.png", 100_000)


def _large(tmp: Path, request: pytest.FixtureRequest) -> None:
    _classes(tmp / "imgs", 5)
    _bomb_png(tmp / "imgs" / "dog" / "large.png", 10_000)  # above Pillow's warning limit, below its error


def _one_class(tmp: Path, request: pytest.FixtureRequest) -> None:
    _classes(tmp / "imgs", 5, names=("cat",))


def _empty_class(tmp: Path, request: pytest.FixtureRequest) -> None:
    _classes(tmp / "imgs", 5)
    (tmp / "imgs" / "emu").mkdir()


def _no_test(tmp: Path, request: pytest.FixtureRequest) -> None:
    _classes(tmp / "imgs", 2)  # round(0.2 · 2) = 0 test images per class


def _config(model: str = "cnn_digits", epochs: int = 1, **kw: object) -> str:
    from convattn.train import TrainConfig

    return TrainConfig(model=model, epochs=epochs, n_train=64, batch_size=32, threads=1, **kw).to_json()


def _other_runs_config(tmp: Path, request: pytest.FixtureRequest) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(_config(epochs=2))


def _checkpoint_of_another_model(tmp: Path, request: pytest.FixtureRequest, keep_name: bool = True) -> None:
    """tmp/run: the config of a cnn_digits run beside the checkpoint of a cnn_tiny run."""
    from convattn.train.checkpoint import load_checkpoint, save_checkpoint

    trained: Path = request.getfixturevalue("trained_run")
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(_config())
    state = load_checkpoint(trained / "checkpoint.pt")
    if not keep_name:  # as a checkpoint written before checkpoints named their model
        del state["model_name"]
    save_checkpoint(tmp / "run" / "checkpoint.pt", {k: v for k, v in state.items() if k != "format"})


def _export(tmp: Path, request: pytest.FixtureRequest, **meta: object) -> None:
    """tmp/export: the trained run's export, with `meta` changed in its model.json."""
    trained: Path = request.getfixturevalue("trained_run")
    shutil.copytree(trained, tmp / "export")
    saved = json.loads((tmp / "export" / "model.json").read_text())
    (tmp / "export" / "model.json").write_text(json.dumps({**saved, **meta}))


def _model_json(text: str) -> Setup:
    def setup(tmp: Path, request: pytest.FixtureRequest) -> None:
        _export(tmp, request)
        (tmp / "export" / "model.json").write_text(text)

    return setup


def _study_folder(metrics: str | None) -> Setup:
    def setup(tmp: Path, request: pytest.FixtureRequest) -> None:
        (tmp / "study").mkdir()
        (tmp / "study" / "study.json").write_text('{"settings": {}}')
        if metrics is not None:
            (tmp / "study" / "metrics.json").write_text(metrics)

    return setup


def _ctrl_c_in_study(tmp: Path, request: pytest.FixtureRequest) -> None:
    import convattn.study as study

    def interrupted(cfg: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    request.getfixturevalue("monkeypatch").setattr(study, "run_study", interrupted)


def _ctrl_c_in_a_section(tmp: Path, request: pytest.FixtureRequest) -> None:
    import convattn.study.runner as runner

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    request.getfixturevalue("monkeypatch").setattr(runner, "_run_section", interrupted)


def _both(*setups: Setup) -> Setup:
    def setup(tmp: Path, request: pytest.FixtureRequest) -> None:
        for one in setups:
            one(tmp, request)

    return setup


# -- the command line: exit 2 and one line naming the value ------------------------------------------

TRAIN = ["train", "--model", "cnn_tiny", "--out", "{tmp}/run"]
FOLDER = [*TRAIN, "--data", "folder:{tmp}/imgs", "--batch-size", "2", "--epochs", "1"]  # a few images
CONVERT = ["convert", "--kernel-size", "3"]

CLI = [
    # study (only what is refused before any work) and its Ctrl-C
    Case("study-jobs-0", ["study", "--jobs", "0"], 2, ("--jobs", "got 0")),
    Case("study-data-digits", ["study", "--data", "digits", "--out", "{tmp}/run"], 2,
         ("'digits'", "cifar10:PATH")),
    Case("study-data-missing", ["study", "--data", "cifar10:{tmp}/nowhere", "--out", "{tmp}/run"], 2,
         ("{tmp}/nowhere",)),
    Case("study-out-file", ["study", "--quick", "--out", "{tmp}/file.txt"], 2, ("{tmp}/file.txt",), _file),
    Case("study-out-read-only", ["study", "--quick", "--out", "{tmp}/ro/run"], 2, ("{tmp}/ro/run",),
         _read_only),
    Case("study-cuda", ["study", "--quick", "--device", "cuda", "--out", "{tmp}/run"], 2, ("device='cuda'",),
         _no_cuda),
    Case("study-ctrl-c", ["study", "--quick", "--out", "{tmp}/run"], 130, ("interrupted",), _ctrl_c_in_study),
    Case("study-ctrl-c-in-a-section", ["study", "--quick", "--jobs", "1", "--out", "{tmp}/run"], 130,
         ("interrupted", "kept in {tmp}/run"), _ctrl_c_in_a_section),
    # report
    Case("report-missing", ["report", "{tmp}/nowhere"], 2, ("{tmp}/nowhere", "no study.json")),
    Case("report-unfinished", ["report", "{tmp}/study"], 2, ("{tmp}/study", "no finished study"),
         _study_folder("{")),
    Case("report-unknown-part", ["report", "{tmp}/study"], 2, ("'bogus'",), _study_folder('{"bogus": {}}')),
    # demo
    Case("demo-unknown", ["demo", "nothing"], 2, ("'nothing'",)),
    Case("demo-out-file", ["demo", "pooling", "--out", "{tmp}/file.txt"], 2, ("{tmp}/file.txt",), _file),
    Case("demo-out-read-only", ["demo", "pooling", "--out", "{tmp}/ro/demo"], 2, ("{tmp}/ro/demo",),
         _read_only),
    # convert: every number a conv takes
    Case("convert-stride-0", [*CONVERT, "--stride", "0"], 2, ("--stride", "got 0")),
    Case("convert-groups-0", [*CONVERT, "--groups", "0"], 2, ("--groups", "got 0")),
    Case("convert-in-channels-0", [*CONVERT, "--in-channels", "0"], 2, ("--in-channels", "got 0")),
    Case("convert-out-channels-0", [*CONVERT, "--out-channels", "0"], 2, ("--out-channels", "got 0")),
    Case("convert-kernel-0", ["convert", "--kernel-size", "0"], 2, ("--kernel-size", "got 0")),
    Case("convert-kernel-3-numbers", ["convert", "--kernel-size", "1", "2", "3"], 2,
         ("--kernel-size", "got 3")),
    Case("convert-dilation-0", [*CONVERT, "--dilation", "0"], 2, ("--dilation", "got 0")),
    Case("convert-padding-negative", [*CONVERT, "--padding", "-1"], 2, ("--padding", "got -1")),
    Case("convert-padding-word", [*CONVERT, "--padding", "full"], 2, ("--padding", "'full'")),
    Case("convert-groups-not-dividing", [*CONVERT, "--groups", "3"], 2, ("groups=3", "divisible")),
    Case("convert-size-0", ["convert", "--size", "0", "0"], 2, ("--size", "got 0")),
    Case("convert-strided-same", [*CONVERT, "--stride", "2", "--padding", "same"], 2, ("strided",)),
    Case("convert-flags-without-kernel", ["convert", "--stride", "2"], 2, ("--kernel-size",)),
    Case("convert-picture-under-a-file", [*CONVERT, "--picture", "{tmp}/file.txt/h.png"], 2,
         ("{tmp}/file.txt/h.png",), _file),
    # properties
    Case("properties-size-0", ["properties", "--size", "0"], 2, ("size=0",)),
    Case("properties-size-4", ["properties", "dwconv", "--size", "4"], 2, ("size=4",)),
    Case("properties-unknown", ["properties", "nope"], 2, ("'nope'",)),
    Case("properties-csv-folder", ["properties", "dwconv", "--csv", "{tmp}"], 2, ("{tmp} is a folder",)),
    # models
    Case("models-csv-exists", ["models", "cnn_tiny", "--csv", "{tmp}/file.txt"], 2,
         ("{tmp}/file.txt exists",),
         _file),
    Case("models-csv-read-only", ["models", "cnn_tiny", "--csv", "{tmp}/ro/m.csv"], 2, ("{tmp}/ro/m.csv",),
         _read_only),
    Case("models-threads-0", ["models", "--threads", "0"], 2, ("--threads", "got 0")),
    # bench: only what is refused before any timing
    Case("bench-out-folder", ["bench", "--quick", "--out", "{tmp}"], 2, ("{tmp} is a folder",)),
    Case("bench-out-exists", ["bench", "--quick", "--out", "{tmp}/file.txt"], 2, ("{tmp}/file.txt exists",),
         _file),
    Case("bench-out-read-only", ["bench", "--quick", "--out", "{tmp}/ro/b.csv"], 2, ("{tmp}/ro/b.csv",),
         _read_only),
    # info
    Case("info-unknown-flag", ["info", "--verbose"], 2, ("--verbose",)),
    # train: the model, its options, the data, the numbers, the run folder, the device, the resumption
    Case("train-unknown-model", ["train", "--model", "cnn_digit", "--out", "{tmp}/run"], 2, ("'cnn_digit'",)),
    Case("train-set-unknown-option", [*TRAIN, "--set", "foo=1"], 2, ("'foo'", "'cnn_tiny'")),
    Case("train-set-not-a-number", [*TRAIN, "--set", "width=abc"], 2, ("width='abc'",)),
    Case("train-set-no-value", [*TRAIN, "--set", "width"], 2, ("'width'", "KEY=VALUE")),
    Case("train-unknown-data", [*TRAIN, "--data", "digitz"], 2, ("'digitz'",)),
    Case("train-folder-missing", [*TRAIN, "--data", "folder:{tmp}/nowhere"], 2, ("{tmp}/nowhere",)),
    Case("train-cifar-missing", [*TRAIN, "--data", "cifar10:{tmp}/nowhere"], 2, ("{tmp}/nowhere",)),
    Case("train-epochs-0", [*TRAIN, "--epochs", "0"], 2, ("epochs=0",)),
    Case("train-lr-nan", [*TRAIN, "--lr", "nan"], 2, ("lr=nan",)),
    Case("train-batch-0", [*TRAIN, "--batch-size", "0"], 2, ("batch_size=0",)),
    Case("train-optimizer", [*TRAIN, "--optimizer", "adam"], 2, ("'adam'",)),
    Case("train-batch-above-data", [*TRAIN, "--n-train", "64", "--batch-size", "512"], 2,
         ("batch_size=512",)),
    Case("train-n-train-below-classes", [*TRAIN, "--n-train", "5"], 2, ("n_train=5",)),
    Case("train-out-file", ["train", "--model", "cnn_tiny", "--out", "{tmp}/file.txt"], 2,
         ("{tmp}/file.txt", "is a file"), _file),
    Case("train-out-read-only", ["train", "--model", "cnn_tiny", "--out", "{tmp}/ro/run"], 2,
         ("{tmp}/ro/run",),
         _read_only),
    Case("train-cuda", [*TRAIN, "--device", "cuda"], 2, ("device='cuda'",), _no_cuda),
    Case("train-resume-nothing", [*TRAIN, "--resume"], 2, ("{tmp}/run", "no config.json")),
    Case("train-resume-other-settings",
         ["train", "--model", "cnn_digits", "--out", "{tmp}/run", *RUN, "--resume"],
         2, ("{tmp}/run holds a different run", "epochs: 2 != 1"), _other_runs_config),
    Case("train-resume-other-model",
         ["train", "--model", "cnn_digits", "--out", "{tmp}/run", *RUN, "--resume"],
         2, ("{tmp}/run/checkpoint.pt", "'cnn_tiny'", "'cnn_digits'"), _checkpoint_of_another_model),
    Case("train-resume-other-model-unnamed",
         ["train", "--model", "cnn_digits", "--out", "{tmp}/run", *RUN, "--resume"], 2,
         ("{tmp}/run/checkpoint.pt", "'cnn_digits'"),
         lambda tmp, request: _checkpoint_of_another_model(tmp, request, keep_name=False)),
    Case("train-decompression-bomb", FOLDER, 2,
         ("{tmp}/imgs/cat/huge.png", "10000000000 pixels"), _bomb),
    Case("train-large-image", FOLDER, 2,
         ("{tmp}/imgs/dog/large.png", "10000x10000"), _large),
    Case("train-one-class", FOLDER, 2, ("{tmp}/imgs", "one class", "'cat'"),
         _one_class),
    Case("train-class-without-images", FOLDER, 2, ("{tmp}/imgs", "'emu'"),
         _empty_class),
    Case("train-empty-test-split", FOLDER, 2, ("{tmp}/imgs", "empty test split"),
         _no_test),
    # eval
    Case("eval-missing", ["eval", "--weights", "{tmp}/nowhere"], 2, ("{tmp}/nowhere", "no exported model")),
    Case("eval-model-json-garbled", ["eval", "--weights", "{tmp}/export"], 2, ("{tmp}/export", "corrupt"),
         _model_json("{")),
    Case("eval-model-json-list", ["eval", "--weights", "{tmp}/export"], 2,
         ("{tmp}/export/model.json", "list"),
         _model_json("[]")),
    Case("eval-model-json-incomplete", ["eval", "--weights", "{tmp}/export"], 2,
         ("{tmp}/export/model.json", "num_classes"), _model_json('{"model": "cnn_tiny"}')),
    Case("eval-model-json-unknown-model", ["eval", "--weights", "{tmp}/export"], 2,
         ("{tmp}/export/model.json", "'nope'"), lambda tmp, request: _export(tmp, request, model="nope")),
    Case("eval-model-json-other-shape", ["eval", "--weights", "{tmp}/export"], 2,
         ("{tmp}/export", "'cnn_tiny'"), lambda tmp, request: _export(tmp, request, num_classes=3)),
    Case("eval-unknown-data", ["eval", "--weights", "{tmp}/export", "--data", "nope"], 2, ("'nope'",),
         lambda tmp, request: _export(tmp, request)),
    Case("eval-cuda", ["eval", "--weights", "{tmp}/export", "--device", "cuda"], 2, ("device='cuda'",),
         _both(_no_cuda, lambda tmp, request: _export(tmp, request))),
    Case("no-such-command", ["frobnicate"], 2, ("'frobnicate'",)),
]  # fmt: skip


# -- the library: ValueError or TypeError naming the value -------------------------------------------

Q = torch.randn(1, 5, 5, 2, 4)  # (B, H, W, heads, d)


def _cfg(**kw: object) -> object:
    from convattn.train import TrainConfig

    return TrainConfig(**{"model": "cnn_tiny", **kw})  # type: ignore[arg-type]


def _load(spec: str, split: str = "train", **kw: object) -> object:
    from convattn.data import load

    return load(spec, split, **kw)  # type: ignore[arg-type]


def _conversion(**kw: object) -> object:
    from convattn.analysis.conversion import check_conversion

    return check_conversion({"in_channels": 8, "out_channels": 8, "kernel_size": 3, **kw})


def _properties(name: str = "dwconv", size: object = 11) -> object:
    from convattn.analysis.properties import measure_properties

    return measure_properties(name, size=size)  # type: ignore[arg-type]


def _study(**kw: object) -> object:
    from convattn.study import StudyConfig

    return StudyConfig(**kw)  # type: ignore[arg-type]


def _evaluate_weights(folder: Path, device: str = "cpu") -> object:
    from convattn.train import evaluate_weights

    return evaluate_weights(folder, device=device)


def _batches(size: int) -> object:
    from convattn.data import batches

    return list(batches(_load("digits", "test"), size, seed=0, epoch=0))  # type: ignore[arg-type]


def _train_on_cuda(tmp: Path) -> object:
    from convattn.train import train

    return train(_cfg(device="cuda", out=str(tmp / "run")), log=lambda s: None)  # type: ignore[arg-type]


API = [
    # models and layers
    Case("create_model-unknown", lambda tmp: convattn.create_model("resnet_18"), ValueError,
         ("'resnet_18'",)),
    Case("create_model-not-a-name", lambda tmp: convattn.create_model(3), TypeError,
         ("int",)),  # type: ignore[arg-type]
    Case("create_model-classes-0", lambda tmp: convattn.create_model("cnn_tiny", num_classes=0), ValueError,
         ("num_classes=0",)),
    Case("create_model-unknown-option", lambda tmp: convattn.create_model("cnn_tiny", foo=1), TypeError,
         ("'foo'", "'cnn_tiny'")),
    Case("create_model-option-type", lambda tmp: convattn.create_model("cnn_tiny", width="abc"), TypeError,
         ("width='abc'",)),
    Case("create_model-image-size", lambda tmp: convattn.create_model("vit_tiny", image_size=3), ValueError,
         ("image_size=3",)),
    Case("create_model-in-chans-0", lambda tmp: convattn.create_model("cnn_tiny", in_chans=0), ValueError,
         ("in_chans=0",)),
    Case("create_mixer-unknown", lambda tmp: convattn.create_mixer("nope", 16), ValueError, ("'nope'",)),
    Case("create_mixer-dim-0", lambda tmp: convattn.create_mixer("dwconv", 0), ValueError, ("dim=0",)),
    Case("create_mixer-dim-float", lambda tmp: convattn.create_mixer("sasa", 2.5), TypeError, ("dim=2.5",)),
    Case("mhsa2d-heads-0", lambda tmp: convattn.MultiHeadSelfAttention2d(8, num_heads=0), ValueError,
         ("num_heads=0",)),
    Case("mhsa2d-encoding", lambda tmp: convattn.MultiHeadSelfAttention2d(8, encoding="bogus"), ValueError,
         ("'bogus'",)),
    # functional operators
    Case("na2d-even-kernel", lambda tmp: F.neighborhood_attention2d(Q, Q, Q, 2), ValueError,
         ("kernel_size=(2, 2)",)),
    Case("na2d-kernel-str", lambda tmp: F.neighborhood_attention2d(Q, Q, Q, "3"), ValueError,
          # type: ignore[arg-type]
         ("kernel_size='3'",)),
    Case("na2d-4d", lambda tmp: F.neighborhood_attention2d(Q[0], Q[0], Q[0], 3), ValueError,
         ("q.shape=(5, 5, 2, 4)",)),
    Case("na2d-int", lambda tmp: F.neighborhood_attention2d(Q.long(), Q.long(), Q.long(), 3), TypeError,
         ("torch.int64",)),
    Case("na2d-border", lambda tmp: F.neighborhood_attention2d(Q, Q, Q, 3, border="wrap"), ValueError,
         ("'wrap'",)),
    Case("window-shift", lambda tmp: F.window_attention2d(Q, Q, Q, 2, shift=2), ValueError,
         ("shift=(2, 2)",)),
    Case("window-0", lambda tmp: F.window_attention2d(Q, Q, Q, 0), ValueError, ("window=0",)),
    Case("pixel-dwconv-kernels",
         lambda tmp: F.pixel_dwconv2d(torch.randn(1, 4, 5, 5), torch.randn(1, 3, 9, 5, 5)),
         ValueError, ("(1, 3, 9, 5, 5)",)),
    Case("image-dwconv-even", lambda tmp: F.image_dwconv2d(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 2, 2)),
         ValueError, ("kernel_size=(2, 2)",)),
    Case("image-dwconv-dtypes",
         lambda tmp: F.image_dwconv2d(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 3, 3, dtype=torch.float64)),
         TypeError, ("torch.float64",)),
    Case("masked-softmax-lens", lambda tmp: F.masked_softmax(torch.randn(2, 3, 4), torch.tensor([1, 2, 3])),
         ValueError, ("valid_lens.shape=(3,)",)),
    Case("attention-widths", lambda tmp: F.dot_product_attention(torch.randn(2, 3, 4), torch.randn(2, 5, 3),
                                                                  torch.randn(2, 5, 6)),
         ValueError, ("keys.shape[-1]=3",)),
    # conversions
    Case("conv_to_attention-linear", lambda tmp: convattn.conv_to_attention(nn.Linear(2, 2)), TypeError,
          # type: ignore[arg-type]
         ("Linear",)),
    Case("conv_to_attention-stride-0", lambda tmp: convattn.conv_to_attention(nn.Conv2d(4, 4, 3, stride=0)),
         ValueError, ("stride=(0, 0)",)),
    Case("conv_to_attention-heads", lambda tmp: convattn.conv_to_attention(nn.Conv2d(4, 4, 3), num_heads=2),
         ValueError, ("num_heads=2",)),
    Case("attention_to_conv-conv", lambda tmp: convattn.attention_to_conv(nn.Conv2d(4, 4, 3)), TypeError,
          # type: ignore[arg-type]
         ("Conv2d",)),
    Case("check_conversion-stride-0", lambda tmp: _conversion(stride=0), ValueError, ("stride=(0, 0)",)),
    Case("check_conversion-kernel-str", lambda tmp: _conversion(kernel_size="3"), ValueError,
         ("kernel_size='3'",)),
    Case("measure_properties-size-0", lambda tmp: _properties(size=0), ValueError, ("size=0",)),
    Case("measure_properties-size-str", lambda tmp: _properties(size="11"), TypeError, ("size='11'",)),
    Case("measure_properties-unknown", lambda tmp: _properties("nope"), ValueError, ("'nope'",)),
    # TrainConfig
    Case("TrainConfig-lr-bool", lambda tmp: _cfg(lr=True), TypeError, ("lr=True",)),
    Case("TrainConfig-lr-inf", lambda tmp: _cfg(lr=float("inf")), ValueError, ("lr=inf",)),
    Case("TrainConfig-epochs-0", lambda tmp: _cfg(epochs=0), ValueError, ("epochs=0",)),
    Case("TrainConfig-optimizer", lambda tmp: _cfg(optimizer="adam"), ValueError, ("optimizer='adam'",)),
    Case("TrainConfig-device", lambda tmp: _cfg(device="tpu"), ValueError, ("device='tpu'",)),
    Case("TrainConfig-warmup", lambda tmp: _cfg(warmup=1.5), ValueError, ("warmup=1.5",)),
    Case("TrainConfig-momentum", lambda tmp: _cfg(momentum=1.0), ValueError, ("momentum=1.0",)),
    Case("TrainConfig-model", lambda tmp: _cfg(model=3), TypeError, ("model=3",)),
    Case("TrainConfig-options", lambda tmp: _cfg(model_options=[1]), TypeError, ("model_options=[1]",)),
    Case("train()-cuda", _train_on_cuda, ValueError, ("device='cuda'",), _no_cuda),
    # data
    Case("load-folder-missing", lambda tmp: _load(f"folder:{tmp}/nowhere"), FileNotFoundError,
         ("{tmp}/nowhere",)),
    Case("load-cifar10-missing", lambda tmp: _load(f"cifar10:{tmp}/nowhere"), FileNotFoundError,
         ("{tmp}/nowhere",)),
    Case("load-cifar-unknown", lambda tmp: _load(f"cifar:{tmp}"), ValueError, ("'cifar:", "'cifar10'")),
    Case("load-unknown", lambda tmp: _load("mnist"), ValueError, ("'mnist'",)),
    Case("load-folder-no-path", lambda tmp: _load("folder:"), ValueError, ("'folder:'",)),
    Case("load-path-not-taken", lambda tmp: _load("shapes:x"), ValueError, ("'shapes:x'",)),
    Case("load-not-a-spec", lambda tmp: _load(3), TypeError, ("int",)),  # type: ignore[arg-type]
    Case("load-split", lambda tmp: _load("digits", "valid"), ValueError, ("split='valid'",)),
    Case("load-n-train-0", lambda tmp: _load("digits", n_train=0), ValueError, ("n_train=0",)),
    Case("load-seed-float", lambda tmp: _load("digits", seed=1.5), TypeError, ("seed=1.5",)),
    Case("load-image-size-0", lambda tmp: _load("digits", image_size=0), ValueError, ("image_size=0",)),
    Case("load-verify", lambda tmp: _load("digits", verify="yes"), ValueError, ("verify='yes'",)),
    Case("load-bomb", lambda tmp: _load(f"folder:{tmp}/imgs"), ValueError,
         ("{tmp}/imgs/cat/huge.png", "pixels"),
         _bomb),
    Case("load-one-class", lambda tmp: _load(f"folder:{tmp}/imgs"), ValueError, ("{tmp}/imgs", "'cat'"),
         _one_class),
    Case("load-empty-test", lambda tmp: _load(f"folder:{tmp}/imgs", "test"), ValueError, ("{tmp}/imgs",),
         _no_test),
    Case("batches-0", lambda tmp: _batches(0), ValueError, ("batch_size=0",)),
    # study and evaluation
    Case("StudyConfig-jobs-0", lambda tmp: _study(jobs=0), ValueError, ("jobs=0",)),
    Case("StudyConfig-device", lambda tmp: _study(device="tpu"), ValueError, ("device='tpu'",)),
    Case("StudyConfig-data", lambda tmp: _study(data="digits"), ValueError, ("'digits'",)),
    Case("evaluate_weights-missing", lambda tmp: _evaluate_weights(tmp / "nowhere"), FileNotFoundError,
         ("{tmp}/nowhere",)),
    Case("evaluate_weights-cuda", lambda tmp: _evaluate_weights(tmp / "export", device="cuda"), ValueError,
         ("device='cuda'",), _both(_no_cuda, lambda tmp, request: _export(tmp, request))),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch cnn_tiny run (checkpoint and export) for the cases that need one."""
    from convattn.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig(model="cnn_tiny", out=str(out), epochs=1, n_train=64, batch_size=32, threads=1)
    train(cfg, log=lambda s: None)
    return out


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


def test_the_catalogue_is_large_and_names_are_unique():
    ids = [c.id for c in CLI + API]
    assert len(ids) == len(set(ids)) and len(CLI) >= 40 and len(API) >= 40
    commands = {c.call[0] for c in CLI if isinstance(c.call, list)}
    assert commands >= {"study", "report", "demo", "convert", "properties", "bench", "models", "train",
                        "eval", "info"}  # fmt: skip


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_the_command_line_refuses_in_one_line(case, tmp_path, request, capsys):
    if case.setup:
        case.setup(tmp_path, request)
    assert isinstance(case.call, list)
    argv = [_fill(a, tmp_path) for a in case.call]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == case.expect, err
    assert "Traceback" not in err and lines and lines[-1].startswith("convattn"), err
    assert len(lines) == 1 or code == 130, err  # a study's progress lines may come before its Ctrl-C
    for words in case.words:
        assert _fill(words, tmp_path) in lines[-1], err


@pytest.mark.parametrize("case", API, ids=[c.id for c in API])
def test_the_library_refuses_naming_the_value(case, tmp_path, request):
    if case.setup:
        case.setup(tmp_path, request)
    assert callable(case.call) and isinstance(case.expect, type)
    with pytest.raises(case.expect) as caught:
        case.call(tmp_path)
    for words in case.words:
        assert _fill(words, tmp_path) in str(caught.value)


def test_refused_requests_leave_no_run_folder(tmp_path, capsys):
    for flags in (["--set", "foo=1"], ["--n-train", "64", "--batch-size", "512"], ["--epochs", "0"]):
        assert main(["train", "--model", "cnn_tiny", "--out", str(tmp_path / "run"), *flags]) == 2
        assert not (tmp_path / "run").exists(), flags
