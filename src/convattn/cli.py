"""The `convattn` command line: parses arguments and calls one library function per subcommand.

torch is imported only inside the handlers, so `convattn --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from convattn import __version__

PROG = "convattn"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and exit code 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _threads(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _cmd_study(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from convattn.study import StudyConfig, run_study

    run_study(StudyConfig(out=args.out, quick=args.quick, seed=args.seed))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import json

    from convattn.study import new_run_dir

    out = new_run_dir(args.out, prefix=f"demo-{args.name}")
    if args.name == "pooling":
        from convattn.demos import attention_pooling

        metrics = attention_pooling.run(out, attention_pooling.PoolingDemoConfig(seed=args.seed))
    else:
        from convattn.demos import seq2seq

        metrics = seq2seq.run(out, seq2seq.Seq2SeqDemoConfig(seed=args.seed))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from convattn.environment import environment

    print(json.dumps(environment(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Self-attention and convolution in vision, executable and measurable.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    common.add_argument("--threads", type=_threads, help="torch CPU threads (default: torch's choice)")

    study = sub.add_parser(
        "study",
        parents=[common],
        help="run the whole study on embedded data and write a run folder",
        description="Run every demo and experiment offline and write figures, metrics and a summary.",
    )
    study.add_argument("--out", type=Path, help="new run folder (default runs/study-<timestamp>)")
    study.add_argument("--quick", action="store_true", help="a small budget for a fast check")
    study.set_defaults(func=_cmd_study)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run one demo of the attention chapter",
        description="pooling: Nadaraya-Watson attention pooling; seq2seq: a Transformer that "
        "learns to reverse strings.",
    )
    demo.add_argument("name", choices=["pooling", "seq2seq"])
    demo.add_argument(
        "--out", type=Path, help="new folder for its figures (default runs/demo-NAME-<timestamp>)"
    )
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", help="print versions, threads and device as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
