"""The `convattn` command line: parses arguments and calls one library function per subcommand.

torch is imported only inside the handlers, so `convattn --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, get_origin, get_type_hints

from convattn import __version__
from convattn.train.config import TrainConfig
from convattn.utils import dist
from convattn.utils.records import write_csv

PROG = "convattn"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _cmd_study(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from convattn.study import StudyConfig, StudyInterrupted, run_study

    cfg = StudyConfig(
        out=args.out, quick=args.quick, seed=args.seed, fresh=args.fresh, data=args.data, epochs=args.epochs,
        device=args.device, jobs=args.jobs,
    )  # fmt: skip
    try:
        run_study(cfg)
    except StudyInterrupted as stop:  # its message says where the study is kept and how to continue
        _say(str(stop))
        return 130
    return 0


def _output_file(path: Path | None, force: bool) -> Path | None:
    """`path` checked before any work: a file to write, not a folder, in a folder that can be written,
    and not an existing file unless `force` (nothing the user saved is replaced without asking)."""
    if path is None:
        return None
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of a file to write")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable folder")
    return path


def _cmd_report(args: argparse.Namespace) -> int:
    from convattn.study.runner import redraw

    print(f"wrote {redraw(args.run_dir)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import json

    from convattn.study.budget import budget_for
    from convattn.study.runner import new_run_dir
    from convattn.study.section import Context, get_section

    out = new_run_dir(args.out, prefix=f"demo-{args.name}")
    section = get_section({"pooling": "attention_pooling", "seq2seq": "seq2seq"}[args.name])
    metrics = section.run(out, Context(seed=args.seed, budget=budget_for(quick=False)))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, int | float)}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _padding(value: str) -> str | int:
    if value in ("same", "valid"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, 'same' or 'valid', got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _one_or_two(name: str, values: list[int] | None) -> int | tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise ValueError(f"--{name} takes one or two numbers, got {len(values)}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _conv_config(args: argparse.Namespace) -> dict[str, object] | None:
    """The conv the flags describe, or None when no conv flag was given (use the table)."""
    if args.kernel_size is None:
        given = [
            f
            for f in ("in_channels", "out_channels", "stride", "padding", "dilation", "groups")
            if getattr(args, f) is not None
        ]
        if given or args.padding_mode != "zeros" or args.no_bias:
            raise ValueError("give --kernel-size to describe one conv (or no conv flags for the table)")
        return None
    pads = args.padding or [0]
    if len(pads) > 2 or (isinstance(pads[0], str) and len(pads) > 1):
        raise ValueError(f"--padding takes one or two ints, 'same' or 'valid', got {pads}")
    config: dict[str, object] = {
        "in_channels": 8 if args.in_channels is None else args.in_channels,
        "out_channels": 8 if args.out_channels is None else args.out_channels,
        "kernel_size": _one_or_two("kernel-size", args.kernel_size),
        "padding": pads[0] if len(pads) == 1 else tuple(pads),
        "padding_mode": args.padding_mode,
        "groups": 1 if args.groups is None else args.groups,
        "bias": not args.no_bias,
    }
    for name in ("stride", "dilation"):
        value = _one_or_two(name, getattr(args, name))
        if value is not None:
            config[name] = value
    return config


def _cmd_convert(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import torch
    from torch import nn

    from convattn.analysis.conversion import CONV_TABLE, check_conversion, conversion_table
    from convattn.convert import conv_to_attention

    one = _conv_config(args)
    for path in (args.csv, args.picture, args.centres):
        _output_file(path, args.force)
    configs = [one] if one is not None else list(CONV_TABLE)
    try:
        rows = [check_conversion(c, size=tuple(args.size), seed=args.seed) for c in configs]
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"invalid convolution: {err}") from None
    lines, exact = conversion_table(rows)
    print("\n".join(lines))
    print(f"input 2x{args.size[0]}x{args.size[1]} unit normal, default-initialised convs, seed {args.seed}")
    if args.csv:
        write_csv(args.csv, rows)
    if args.picture or args.centres:
        from convattn.analysis.viz import plot_attention_heads, plot_quadratic_centres

        torch.manual_seed(args.seed)
        layer = conv_to_attention(nn.Conv2d(**configs[0])).attention  # type: ignore[arg-type]
        side = max(11, *args.size)
        if args.picture:
            plot_attention_heads(
                layer, args.picture, size=(side, side), title="converted conv: one head per kernel tap"
            )
            print(f"wrote {args.picture}")
        if args.centres:
            plot_quadratic_centres(layer, args.centres)
            print(f"wrote {args.centres}")
    return 0 if exact else 1


def _cmd_properties(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from convattn.analysis.properties import format_properties, property_table

    _output_file(args.csv, args.force)
    rows = [p.row() for p in property_table(args.mixers or None, size=args.size)]
    print("\n".join(format_properties(rows, args.size)))
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from convattn.analysis.bench import BenchConfig, run_bench, targets_path, training_path

    # A new file by default: a second run never replaces the first one's numbers.
    out = _output_file(args.out, args.force) or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    _output_file(targets_path(out), args.force)  # the target table goes beside it
    _output_file(training_path(out), args.force)  # and the training step's before/after table
    cfg = BenchConfig.quick(out) if args.quick else BenchConfig(out=out)
    run_bench(cfg)
    written = [p for p in (out, targets_path(out), training_path(out)) if p.exists()]
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON where it parses (numbers, true/false, lists), else a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# How `convattn train` spells the TrainConfig fields whose type alone does not say it.
_TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "model_options": {"flag": "--set", "type": _option, "action": "append", "metavar": "KEY=VALUE",
                      "help": "a model option (repeat for several), e.g. --set dropout=0"},
    "moco_options": {"flag": "--moco", "type": _option, "action": "append", "metavar": "KEY=VALUE",
                     "help": "a MoCo setting (repeat for several), e.g. --moco queue_size=1024"},
    "out": {"required": True},  # a run folder is always named: never one the user did not choose
}  # fmt: skip


_DEFAULT = " (default: %(default)s)"


def _add_config_flags(
    parser: argparse.ArgumentParser, config: type, spelling: dict[str, dict[str, Any]]
) -> None:
    """One flag per field of the dataclass `config`: `--field-name`, with the field's type, default,
    choices and description (`metadata["help"]`); `spelling` overrides argparse settings (a dict field
    needs one: its flag, type and action)."""
    types = get_type_hints(config)
    for f in fields(config):
        kind, extra = types[f.name], dict(spelling.get(f.name, {}))
        flag = extra.pop("flag", "--" + f.name.replace("_", "-"))
        options: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"].replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction  # --flip and --no-flip
        elif get_origin(kind) is None:
            options["type"] = kind
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        if extra.get("required", f.default is MISSING and f.default_factory is MISSING):
            options["required"] = True
        elif f.default is not MISSING:
            options["default"] = f.default
            options["help"] += _DEFAULT
        action = parser.add_argument(flag, **(options | extra))
        if action.help and action.help.count(_DEFAULT) > 1:  # some Pythons' BooleanOptionalAction add it
            action.help = action.help.replace(_DEFAULT, "", 1)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags of `_add_config_flags` describe (a dict field from its KEY=VALUE pairs)."""
    types = get_type_hints(TrainConfig)
    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    for name, value in values.items():
        if get_origin(types[name]) is dict:
            values[name] = dict(value or [])
    return TrainConfig(**values)


def _cmd_train(args: argparse.Namespace) -> int:
    from convattn.train import Interrupted, train

    try:
        cfg = _train_config(args)
        result = train(cfg, resume=args.resume)
    except Interrupted as stop:
        _say(f"{stop}; continue with --resume")
        return 130
    if dist.is_main():  # under torchrun, only the first process reports
        val = cfg.holdout > 0
        score = f"validation accuracy {result.val_acc:.4f}" if val else f"test accuracy {result.test_acc:.4f}"
        if "test_knn_acc" in result.scores:  # MoCo: the k-NN monitor on the labelled split
            score = f"test k-NN accuracy {result.scores['test_knn_acc']:.4f}"
        if "test_AP50" in result.scores:  # a detector: COCO's numbers
            ap = {k: result.scores[f"test_{k}"] for k in ("AP", "AP50", "AP75")}
            score = "test " + "  ".join(f"{k} {v:.4f}" for k, v in ap.items())
        print(f"{score}  (run folder {result.out})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import json

    from convattn.train import evaluate_weights

    print(json.dumps(evaluate_weights(args.weights, args.data, args.device), indent=2))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from convattn.analysis.summary import format_models, model_table

    _output_file(args.csv, args.force)
    rows = model_table(args.pattern, details=args.details)
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 1
    print("\n".join(format_models(rows, details=args.details)))
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from convattn.utils.environment import environment

    print(json.dumps(environment(), indent=2))
    return 0


class _Commands:
    """Adds the subcommands: each with its handler, a one-line summary, and the common flags unless told."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.common = _Parser(add_help=False)
        self.common.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
        self.common.add_argument(
            "--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)"
        )

    def add(
        self,
        name: str,
        func: Callable[[argparse.Namespace], int],
        summary: str,
        description: str | None = None,
        *,
        common: bool = True,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.sub.add_parser(
            name, parents=[self.common] if common else [], help=summary, description=description
        )
        parser.set_defaults(func=func)
        return parser


def _add_study_commands(commands: _Commands) -> None:
    study = commands.add(
        "study",
        _cmd_study,
        "run the whole study on embedded data and write a run folder with report.html",
        "Run every demo and experiment offline and write figures, tables, metrics and a self-contained "
        "report.html. Run it again to continue an interrupted study.",
    )
    study.add_argument(
        "--out",
        type=Path,
        help="run folder (default: continue the newest unfinished runs/study-*, or a new one)",
    )
    study.add_argument("--quick", action="store_true", help="a small budget for a fast check")
    study.add_argument(
        "--fresh", action="store_true", help="start a new run folder instead of continuing an unfinished one"
    )
    study.add_argument(
        "--data",
        metavar="cifar10:PATH",
        help="the paper-scale study: Cordonnier et al.'s CIFAR-10 comparison with their recipe, on the "
        "python-pickle batches in PATH, next to the published numbers",
    )
    study.add_argument(
        "--epochs",
        type=_positive_int,
        help="epochs of the main comparison (default: the study's budget; 300 with --data)",
    )
    study.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the training runs")
    study.add_argument(
        "--jobs",
        type=_positive_int,
        help="training runs at once, one CPU thread each (default: one per core); the results do not change",
    )
    report = commands.add(
        "report",
        _cmd_report,
        "draw a finished study's figures again from its CSV files and write report.html and summary.md",
        common=False,
    )
    report.add_argument("run_dir", type=Path, help="a study run folder")
    demo = commands.add(
        "demo",
        _cmd_demo,
        "run one demo of the attention chapter",
        "pooling: Nadaraya-Watson attention pooling; seq2seq: a Transformer that learns to reverse strings.",
    )
    demo.add_argument("name", choices=["pooling", "seq2seq"])
    demo.add_argument(
        "--out", type=Path, help="new folder for its figures (default runs/demo-NAME-<timestamp>)"
    )


def _add_analysis_commands(commands: _Commands) -> None:
    convert = commands.add(
        "convert",
        _cmd_convert,
        "turn Conv2d layers into exactly equivalent self-attention and back, with errors",
        "Convert a table of Conv2d configurations (or the one the flags describe) to multi-head "
        "self-attention with quadratic encoding (Cordonnier et al., Theorem 1), report the max error "
        "against the conv in float32 and float64, and convert back.",
    )
    convert.add_argument("--in-channels", type=_positive_int, help="(default 8)")
    convert.add_argument("--out-channels", type=_positive_int, help="(default 8)")
    convert.add_argument("--kernel-size", type=_positive_int, nargs="+", metavar="K")
    convert.add_argument("--stride", type=_positive_int, nargs="+", metavar="S")
    convert.add_argument(
        "--padding", type=_padding, nargs="+", metavar="P", help="ints >= 0, 'same' or 'valid'"
    )
    convert.add_argument("--dilation", type=_positive_int, nargs="+", metavar="D")
    convert.add_argument("--groups", type=_positive_int, help="(default 1)")
    convert.add_argument(
        "--padding-mode", default="zeros", choices=["zeros", "reflect", "replicate", "circular"]
    )
    convert.add_argument("--no-bias", action="store_true")
    convert.add_argument(
        "--size", type=_positive_int, nargs=2, default=[16, 16], metavar=("H", "W"), help="input size"
    )
    convert.add_argument("--picture", type=Path, help="PNG of the converted layer's heads (first conv)")
    convert.add_argument("--centres", type=Path, help="PNG of its head centres")
    props = commands.add(
        "properties",
        _cmd_properties,
        "measure the DWNet property table of every spatial mixer",
        "Spatial support, channel mixing, weight sharing and dynamic weights of each mixer, measured with "
        "autograd on the operator itself, with parameter and multiply-add counts.",
    )
    props.add_argument("mixers", nargs="*", help="mixers to measure (default: all)")
    props.add_argument("--size", type=int, default=11, help="side of the probe map, at least 5 (default 11)")
    bench = commands.add(
        "bench",
        _cmd_bench,
        "time every mixer beside its peers and write a CSV",
        "Forward and forward+backward medians (operators alternating), peak memory, MACs and GFLOP/s of "
        "every mixer, neighbourhood attention, unfold local attention and global SDPA, with ratios to a "
        "7x7 depth-wise conv in channels_last measured in the same run.",
    )
    bench.add_argument("--out", type=Path, help="CSV to write (default a new runs/bench-<timestamp>.csv)")
    bench.add_argument("--quick", action="store_true", help="small shapes, a few repeats (under a minute)")
    models = commands.add("models", _cmd_models, "list the registered models")
    models.add_argument("pattern", nargs="?", help="shell pattern, e.g. 'resnet*'")
    models.add_argument("--details", action="store_true", help="parameters and MACs (attention counted)")
    for table in (convert, props, models):
        table.add_argument("--csv", type=Path, help="also write the table as CSV")
    for writer in (convert, props, models, bench):
        writer.add_argument("--force", action="store_true", help="replace output files that exist")


def _add_train_commands(commands: _Commands) -> None:
    train = commands.add(
        "train",
        _cmd_train,
        "train a registered model on a data set; resumable, and runs under torchrun",
        "Train MODEL on DATA into a run folder (config.json, checkpoint.pt at epoch ends, "
        "metrics.jsonl/csv, model.safetensors). --resume continues a killed run to the same weights, bit "
        "for bit. Under `torchrun --nproc_per_node N` it trains with DistributedDataParallel. The flags "
        "are the fields of convattn.train.TrainConfig.",
        common=False,  # --seed and --threads are TrainConfig fields
    )
    _add_config_flags(train, TrainConfig, _TRAIN_FLAGS)
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    evaluate = commands.add("eval", _cmd_eval, "evaluate exported weights (a run folder) on a test set")
    evaluate.add_argument("--weights", type=Path, required=True, help="folder with model.safetensors")
    evaluate.add_argument("--data", help="data set (default: the one it was trained on)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Self-attention and convolution in vision, executable and measurable."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = _Commands(parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser))
    _add_study_commands(commands)
    _add_analysis_commands(commands)
    _add_train_commands(commands)
    commands.add("info", _cmd_info, "print versions, threads and device as JSON", common=False)
    return parser


def _say(message: str) -> None:
    """`convattn: MESSAGE` as one line on stderr."""
    print(f"{PROG}: {' '.join(message.splitlines())}", file=sys.stderr)


# A request refused because of what the user gave (a value, a path): exit code 2, as argparse's.
REFUSED = (
    ValueError,
    TypeError,
    FileExistsError,  # convattn.utils.folders.FolderInUseError among them
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _failed_run(err: RuntimeError) -> bool:
    """Whether `err` is a run that failed on its own (a diverging training run), not a bug."""
    from convattn.train.engine import Diverged  # loaded already when it was raised

    return isinstance(err, Diverged)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status, each non-zero one with one line on stderr and
    no traceback: 2 for a request refused because of its input (a bad value or flag, a missing, used,
    busy or read-only path), 1 for a run that failed (a diverging training run, an error of the
    operating system such as a full disk) or a result that is not the one asked for (`convert`: a
    conversion that is not exact; `models`: no match), 130 for Ctrl-C."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        return int(args.func(args))
    except REFUSED as err:
        _say(f"error: {err}")
        return 2
    except OSError as err:
        _say(f"error: {err}")
        return 1
    except RuntimeError as err:
        if not _failed_run(err):
            raise  # a bug: its traceback is what a report needs
        _say(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
