"""The seq2seq section: reversal data, training, the full demo, and the section's text."""

from __future__ import annotations

import json

from convattn.study.sections import seq2seq


def test_training_halves_the_loss_in_a_few_steps():
    cfg = seq2seq.Seq2SeqDemoConfig(steps=80, warmup=10, train_size=32, batch_size=32)
    data = seq2seq.make_reversal_data(32, num_symbols=10, min_len=3, max_len=10, seed=0)
    _, losses = seq2seq.train(cfg, data)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_reversal_data_is_well_formed_and_held_out():
    test = seq2seq.make_reversal_data(50, num_symbols=4, min_len=2, max_len=5, seed=1)
    train = seq2seq.make_reversal_data(
        200, num_symbols=4, min_len=2, max_len=5, seed=0, exclude=seq2seq.strings_of(test)
    )
    assert not seq2seq.strings_of(test) & seq2seq.strings_of(train)
    for i in range(len(train)):
        n = int(train.src_len[i])
        s = train.src[i, : n - 1].tolist()
        assert train.src[i, n - 1] == seq2seq.EOS and (train.src[i, n:] == seq2seq.PAD).all()
        assert train.tgt_out[i, : n - 1].tolist() == s[::-1] and train.tgt_out[i, n - 1] == seq2seq.EOS
        assert train.tgt_in[i, 0] == seq2seq.BOS and train.tgt_in[i, 1:n].tolist() == s[::-1]


def test_demo_reaches_95_percent_exact_match(tmp_path):
    """The full demo (about 20 s on one thread): D2L's small Transformer learns reversal."""
    metrics = seq2seq.run(tmp_path)
    assert metrics["test_exact_match"] >= 0.95, metrics
    assert metrics["train_seconds"] < 90


def test_the_quick_study_section_says_what_it_measured(quick_study):
    part = json.loads((quick_study / "seq2seq" / "part.json").read_text())
    m = part["metrics"]
    assert m["config"]["steps"] == 150 and m["config"]["test_size"] == 100  # the quick budget
    assert f"exact match {m['test_exact_match']:.1%}" in part["text"]
    assert part["text"] == seq2seq.describe(m).text
