"""utils.dist: torchrun's topology from the environment or the group, and its collectives on 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convattn.utils import dist

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


def test_outside_torchrun_one_process_and_no_group(no_torchrun):
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    with dist.process_group("gloo") as made:
        assert made is False
    dist.barrier()  # nothing to wait for
    assert dist.any_process(True) is True and dist.any_process(False) is False


def test_without_a_group_the_answers_come_from_torchrun_s_variables(no_torchrun, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (3, 4, 1, False)


WORKER = """
import sys
from pathlib import Path

from convattn.utils import dist

with dist.process_group("gloo") as made:
    me = dist.rank()
    votes = [dist.any_process(False), dist.any_process(me == 1), dist.any_process(True)]
    dist.barrier()
    line = f"rank {me}/{dist.world_size()} main={dist.is_main()} made={made} votes={votes}"
    (Path(sys.argv[1]) / f"rank{me}.txt").write_text(line)  # one file each: stdout lines could interleave
"""


def test_two_processes_agree_on_any_vote(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert lines == [
        "rank 0/2 main=True made=True votes=[False, True, True]",
        "rank 1/2 main=False made=True votes=[False, True, True]",
    ]
