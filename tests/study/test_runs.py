"""Chains of runs: in order in one worker, side by side across workers, the same as in this process."""

from __future__ import annotations

from itertools import chain as flat

import pytest
import torch
from safetensors.torch import load_file

from convattn.study.runs import parallel, run_chains, run_folder, shared_runs
from convattn.train import TrainConfig


def _cfg(**kw) -> TrainConfig:
    base = dict(model="resnet_tiny", data="shapes", n_train=32, epochs=1, batch_size=16, threads=1,
                crop_pad=0, eval_every=1)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _chains() -> list[list[TrainConfig]]:
    first = _cfg(seed=1)
    return [[first, _cfg(seed=2, init_from=str(run_folder(first)), lr=1e-3)], [_cfg(seed=3)]]


def test_chains_in_workers_equal_the_chains_in_this_process(tmp_path):
    with shared_runs(tmp_path / "here"):
        here = run_chains(_chains())
        here_folders = [[run_folder(c) for c in chain] for chain in _chains()]
    with shared_runs(tmp_path / "there"), parallel(2):
        there = run_chains(_chains())
        there_folders = [[run_folder(c) for c in chain] for chain in _chains()]
    assert [len(chain) for chain in there] == [2, 1]
    for a, b in zip(flat(*here), flat(*there), strict=True):
        assert [h["test_acc"] for h in a] == [h["test_acc"] for h in b]
    for a, b in zip(flat(*here_folders), flat(*there_folders), strict=True):
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    first, second = there_folders[0]
    # the second run of a chain starts after the first has exported the weights it starts from
    assert (second / "config.json").stat().st_mtime >= (first / "model.safetensors").stat().st_mtime


def test_bad_chains_are_named(tmp_path):
    shared = _cfg(seed=1)
    with shared_runs(tmp_path), pytest.raises(ValueError, match="chain 1 holds no run"):
        run_chains([[shared], []])
    with shared_runs(tmp_path), pytest.raises(ValueError, match=r"resnet_tiny .* is in chains 0 and 1"):
        run_chains([[shared], [_cfg(seed=2), shared]])
