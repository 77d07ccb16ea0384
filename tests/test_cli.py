"""The command line as a user meets it: help, version, errors, and the study's run folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from convattn import __version__
from convattn.cli import main

EXPECTED_PARTS = [
    "conversion",
    "fit_conv",
    "learns_conv",
    "cnn_vs_attention",
    "data_efficiency",
    "locality",
    "operators",
    "attention_pooling",
    "seq2seq",
    "detection",
    "moco",
]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convattn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_subcommands_without_importing_torch():
    code = (
        "import sys\nfrom convattn.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    for sub in ("study", "demo", "info"):
        assert sub in out


def test_version():
    result = _run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"convattn {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["study", "--nope"],
        ["frobnicate"],
        ["demo", "nothing"],
        ["study", "--threads", "0"],
        ["study", "--epochs", "many"],
        ["study", "--device", "tpu"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convattn")


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_study_quick_writes_its_run_folder_and_report(quick_study, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(quick_study, out)
    metrics = json.loads((out / "metrics.json").read_text())
    env = json.loads((out / "environment.json").read_text())
    assert env["torch_threads"] == 1
    parts = {key: json.loads((out / key / "part.json").read_text()) for key in metrics}
    assert list(parts) == EXPECTED_PARTS
    figures = [(key, f["file"]) for key, part in parts.items() for f in part["figures"]]
    assert len(figures) >= len(parts)
    compare = metrics["cnn_vs_attention"]
    assert {r["kind"] for r in compare["rows"]} == {"CNN", "attention"}
    assert all(
        0 <= r["test_acc_mean"] <= 1 and r["params"] > 0 and r["macs_per_image"] > 0 for r in compare["rows"]
    )
    assert metrics["conversion"]["all_round_trips_identical"]
    page = (out / "report.html").read_text()
    for key, name in figures:
        img = mpimg.imread(out / key / name)
        assert min(img.shape[:2]) > 100
        assert f"({key}/{name})" in (out / "summary.md").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(figures)
    # No link out of the page; embedded images are base64, which can spell "http" by chance.
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.split("<body>")[1])
    assert "http" not in text
    for key in metrics:
        assert f'<section id="{key}">' in page and f'href="#{key}"' in page
    for part in parts.values():  # every table has its Markdown twin
        assert all((out / part["key"] / t["file"]).with_suffix(".md").exists() for t in part["tables"])
    assert 0.0 <= metrics["seq2seq"]["test_exact_match"] <= 1.0
    # Every figure is drawn again from the CSV files alone, identically.
    # (The browser test saves its screenshots beside the report: they are not figures.)
    pngs = {p: p.read_bytes() for p in out.rglob("*.png") if "runs" not in p.parts and p.parent != out}
    assert {str(p.relative_to(out)) for p in pngs} >= {f"{key}/{name}" for key, name in figures}
    for p in pngs:
        p.unlink()
    (out / "report.html").unlink()
    again = _run("report", str(out))
    assert again.returncode == 0, again.stderr
    assert all(p.read_bytes() == data for p, data in pngs.items())
    assert (out / "report.html").read_text() == page


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--data", "digits"], "cifar10:PATH"),
        (["--data", "cifar10:/nowhere/at/all", "--epochs", "1"], "/nowhere/at/all"),
    ],
)
def test_study_refuses_bad_data_in_one_line(tmp_path, args, words):
    result = _run("study", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and words in result.stderr
    assert not (tmp_path / "run" / "paper").exists()


def test_report_of_a_folder_without_a_study_is_one_line(tmp_path):
    result = _run("report", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "has no study.json" in result.stderr


def test_an_interrupted_study_continues_from_its_finished_parts(quick_study, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(quick_study, out)
    kept = (out / "conversion" / "part.json").stat().st_mtime_ns
    (out / "report.html").unlink()  # as if stopped before the end ...
    (out / "seq2seq" / "part.json").unlink()  # ... with the last part half-written
    stale = out / "seq2seq" / "stale.txt"
    stale.write_text("half-written")
    result = _run("study", "--quick", "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "continuing" in result.stderr and "kept from the earlier run" in result.stderr
    assert (out / "conversion" / "part.json").stat().st_mtime_ns == kept  # finished part not redone
    assert (out / "seq2seq" / "part.json").exists() and not stale.exists()  # half-written part redone
    assert (out / "report.html").exists()


def test_study_never_writes_into_a_used_folder(tmp_path):
    keep = tmp_path / "mine.txt"
    keep.write_text("precious")
    result = _run("study", "--quick", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "exists" in result.stderr
    assert keep.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_convert_prints_the_table_and_writes_pictures(tmp_path):
    result = _run(
        "convert", "--size", "9", "9", "--picture", str(tmp_path / "h.png"), "--csv", str(tmp_path / "t.csv")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["convolution", "heads"]
    assert sum(line.endswith("identical") for line in lines) == 9
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 10


def test_convert_one_conv_from_flags():
    result = _run(
        "convert", "--kernel-size", "2", "3", "--stride", "2", "--padding", "1", "--padding-mode", "reflect"
    )
    assert result.returncode == 0, result.stderr
    assert "k=2x3 s=2x2 p=1x1" in result.stdout and "identical" in result.stdout
    bad = _run("convert", "--kernel-size", "3", "--stride", "2", "--padding", "same")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "strided" in bad.stderr


def test_properties_table(tmp_path):
    result = _run("properties", "dwconv", "sasa", "--csv", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split()[:5] == ["dwconv", "local", "3x3", "no", "yes"]
    assert lines[3].split()[:4] == ["sasa", "local", "3x3", "no"]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3


def test_bench_quick_writes_a_sane_csv(tmp_path):
    import csv
    import math

    out = tmp_path / "bench.csv"
    result = _run("bench", "--quick", "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    ops = {r["op"] for r in rows}
    assert {
        "dwconv7_channels_last",
        "sasa",
        "window",
        "na2d_k7",
        "window_w7",
        "image_dwconv7",
        "pixel_dwconv7",
        "unfold_local_k7",
        "sdpa_global",
        "flex_na2d_k7",
    } <= ops
    for r in rows:
        if r["op"] == "flex_na2d_k7":  # no CPU backward in torch: forward only
            assert float(r["fwd_ms"]) > 0 and math.isnan(float(r["fwdbwd_ms"]))
            continue
        assert float(r["fwd_ms"]) > 0 and float(r["fwdbwd_ms"]) >= float(r["fwd_ms"]) * 0.5
        assert int(r["macs"]) > 0 and float(r["matmul_gflops"]) > 0 and r["threads"] == "1"
        assert r["torch"].startswith("2.") and r["cpu"]
        assert r["ratio_trusted"] in ("True", "False") and float(r["fwd_ratio_noise"]) >= 0
    base = next(r for r in rows if r["op"] == "dwconv7_channels_last")
    # the baseline against itself, repeat by repeat: exactly 1, with no noise at all
    assert float(base["fwd_ratio_to_dwconv"]) == 1.0 and float(base["fwd_ratio_noise"]) == 0.0
    assert base["ratio_trusted"] == "True"


def test_models_lists_presets_and_details_count_them(tmp_path):
    result = _run("models", "cnn_*", "--details", "--csv", str(tmp_path / "m.csv"))
    assert result.returncode == 0, result.stderr
    assert "cnn_digits" in result.stdout and "56,554 params" in result.stdout
    assert _run("models", "nothing*").returncode == 1  # no match: a result, not a refusal


def test_train_and_eval_refuse_bad_requests_in_one_line(tmp_path):
    missing = _run("eval", "--weights", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "holds no exported model" in missing.stderr
    assert "Traceback" not in missing.stderr
    typo = _run("train", "--model", "cnn_digit", "--out", str(tmp_path / "run"))
    assert typo.returncode == 2 and "did you mean 'cnn_digits'" in typo.stderr
    assert not (tmp_path / "run").exists()  # a mistyped name leaves no folder behind
    data = _run("train", "--model", "cnn_digits", "--data", "digitz", "--out", str(tmp_path / "run2"))
    assert data.returncode == 2 and "digitz" in data.stderr and "Traceback" not in data.stderr


# -- convattn train: flags from TrainConfig, errors and interruptions in one line -------------------------


def _train_args(*flags: str):
    from convattn.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", *flags])
    return _train_config(args), args


def test_train_flags_default_to_the_train_config():
    from convattn.train import TrainConfig

    cfg, _ = _train_args("--model", "cnn_digits", "--out", "runs/x")
    assert cfg == TrainConfig(model="cnn_digits", out="runs/x")


def test_every_train_config_field_has_a_flag():
    from dataclasses import fields

    from convattn.train import TrainConfig

    given = {
        "data": "shapes", "epochs": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.1, "momentum": 0.8,
        "weight_decay": 1e-4, "warmup": 0.1, "label_smoothing": 0.1, "clip_grad": 1.0, "crop_pad": 2,
        "flip": True, "seed": 5, "threads": 2, "device": "cuda", "data_seed": 7, "eval_every": 2,
        "n_train": 100,
        "holdout": 50,
        "position_lr_scale": 10.0,
        "channels_last": False,
        "init_from": "runs/pre",
        "method": "moco",
        "train_only": "head",
    }  # fmt: skip

    def flag(k: str, v: object) -> str:
        name = k.replace("_", "-")
        return f"--{name}" if v is True else f"--no-{name}" if v is False else f"--{name}={v}"

    flags = [flag(k, v) for k, v in given.items()]
    cfg, _ = _train_args("--model", "m", "--out", "o", "--set", "dropout=0", "--set", "width=2",
                         "--moco", "queue_size=64", *flags)  # fmt: skip
    expected = TrainConfig(model="m", out="o", model_options={"dropout": 0, "width": 2},
                           moco_options={"queue_size": 64}, **given)  # fmt: skip
    assert cfg == expected
    assert {f.name for f in fields(TrainConfig)} == {"model", "out", "model_options", "moco_options", *given}
    assert _train_args("--model", "m", "--out", "o", "--flip", "--no-flip")[0].flip is False


@pytest.mark.parametrize(
    ("flags", "expected"),
    [  # the commands of README.md's training section
        ("--model cnn_digits --data digits --epochs 15 --out runs/cnn --resume",
         {"model": "cnn_digits", "data": "digits", "epochs": 15, "out": "runs/cnn"}),
        ("--model resnet18_cifar --data cifar10:data/c --epochs 300 --optimizer sgd --lr 0.1 --weight-decay "
         "1e-4 --batch-size 128 --flip --out runs/r18-gpu --device cuda",
         {"model": "resnet18_cifar", "data": "cifar10:data/c", "epochs": 300, "optimizer": "sgd", "lr": 0.1,
          "weight_decay": 1e-4, "batch_size": 128, "flip": True, "out": "runs/r18-gpu", "device": "cuda"}),
    ],
)  # fmt: skip
def test_the_documented_train_flags_still_work(flags, expected):
    from convattn.train import TrainConfig

    cfg, args = _train_args(*flags.split())
    assert cfg == TrainConfig(**expected) and args.resume == ("--resume" in flags)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--set", "width=1.5"], "width must be an int, got width=1.5"),  # a TypeError of the model
        (["--lr", "-1"], "lr must be positive"),  # a ValueError of TrainConfig
    ],
)
def test_train_refuses_a_bad_option_in_one_line(tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    assert main(["train", "--model", "cnn_digits", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convattn: error: ") and words in err and err.count("\n") == 1
    assert not out.exists()


def test_ctrl_c_anywhere_is_one_line_and_exit_130(monkeypatch, capsys):
    import convattn.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "convattn: interrupted\n"


def test_an_interrupted_study_says_how_to_continue_and_exits_130(monkeypatch, capsys, tmp_path):
    import convattn.study as study

    message = f"interrupted; the study is kept in {tmp_path}: run the same command again to continue"

    def stop(cfg, **kwargs):
        raise study.StudyInterrupted(message)

    monkeypatch.setattr(study, "run_study", stop)
    assert main(["study", "--quick", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == f"convattn: {message}\n"


@pytest.mark.parametrize(
    "command",
    [
        ["convert", "--kernel-size", "3", "--csv", "{f}"],
        ["convert", "--kernel-size", "3", "--picture", "{f}"],
        ["models", "cnn_*", "--csv", "{f}"],
        ["properties", "dwconv", "--size", "5", "--csv", "{f}"],
        ["bench", "--quick", "--out", "{f}"],
    ],
)
def test_a_file_the_user_has_is_never_replaced_without_force(tmp_path, capsys, command):
    mine = tmp_path / "mine.csv"
    mine.write_text("MINE\n")
    args = [a.replace("{f}", str(mine)) for a in command]
    assert main([*args, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{mine} exists; pass --force to replace it" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "MINE\n"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = [a.replace("{f}", str(folder)) for a in command]
    assert main([*args, "--threads", "1"]) == 2  # refused at once, before any work
    assert "is a folder; give the path of a file" in capsys.readouterr().err


def test_force_replaces_a_file(tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("MINE\n")
    assert main(["models", "cnn_tiny", "--csv", str(mine), "--force"]) == 0
    assert mine.read_text().startswith("name")


def test_report_writes_only_into_a_folder_a_study_made(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "environment.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a study's run folder (it has no study.json)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment.json", "metrics.json"]


def test_exit_codes_tell_a_refused_request_from_a_failed_run(monkeypatch, capsys):
    import convattn.cli as cli
    from convattn.train import Diverged

    def raising(err: BaseException):
        def handler(args):
            raise err

        return handler

    for err, code in [
        (ValueError("bad value x=3"), 2),
        (PermissionError("cannot write into out"), 2),
        (OSError(28, "No space left on device"), 1),  # the operating system failed the run
        (Diverged("training diverged: the loss is nan"), 1),
    ]:
        monkeypatch.setattr(cli, "_cmd_info", raising(err))
        assert main(["info"]) == code, err
        assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setattr(cli, "_cmd_info", raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        main(["info"])
