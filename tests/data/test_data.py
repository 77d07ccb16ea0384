"""Data sets, augmentation and batching: real counts, determinism, safe CIFAR reading, shard equality."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

import convattn.data.cifar as cifar_module
from convattn.data import (
    Augment,
    ImageSet,
    UnsafePickleError,
    augment_batch,
    batches,
    default_augment,
    list_datasets,
    load,
    num_batches,
    subset_order,
)
from convattn.data.generated import FOREGROUND, PALETTE

# ---------------------------------------------------------------------------------------------- digits


def test_digits_are_the_1797_real_images_in_a_fixed_stratified_split():
    from sklearn.datasets import load_digits

    train, test = load("digits", "train"), load("digits", "test", seed=123)
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 16 and train.max_value == 16
    assert train.classes == tuple("0123456789") and train.num_classes == 10
    # Together the splits hold every real image exactly once.
    real = load_digits()
    ours = torch.cat([train.images, test.images]).reshape(-1, 64).double().numpy()
    assert np.array_equal(np.unique(ours, axis=0), np.unique(real.data, axis=0))
    assert sorted(torch.cat([train.labels, test.labels]).tolist()) == sorted(real.target.tolist())
    # Stratified: each class contributes round(20 %) of its images to test.
    counts = np.bincount(real.target, minlength=10)
    assert torch.bincount(test.labels, minlength=10).tolist() == [round(0.2 * c) for c in counts]
    # Fixed: another call, another seed, same split.
    again = load("digits", "test", seed=7)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits32_are_the_same_digits_enlarged_4x_and_never_flipped():
    import torch.nn.functional as F

    small, big = load("digits", "train"), load("digits32", "train")
    assert big.images.shape == (1438, 1, 32, 32) and big.max_value == 255 and big.classes == small.classes
    assert torch.equal(big.labels, small.labels)  # the same images in the same order
    # Average-pooling each 4×4 block gives back the original pixel, smoothed by the interpolation with
    # its neighbours: nearly the same image, a different image would not correlate.
    back = F.avg_pool2d(big.images.double() * (16 / 255), 4).flatten(1)  # (N, 64)
    orig = small.images.double().flatten(1)
    corr = [float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(back, orig, strict=True)]
    assert min(corr) > 0.9
    shuffled = [
        float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(back[1:], orig[:-1], strict=True)
    ]
    assert np.mean(shuffled) < 0.6
    assert default_augment(big) == Augment(crop_pad=4, flip=False)  # a mirrored 2 is no 2 at any size
    sub = load("digits32", "train", n_train=200, seed=3)  # a fixed set: the digits' own nested subset
    assert torch.equal(sub.labels, load("digits", "train", n_train=200, seed=3).labels)


def test_test_split_is_normalised_with_train_statistics():
    train, test = load("digits", "train"), load("digits", "test")
    assert test.mean == train.mean and test.std == train.std
    x, y = train.tensors()
    assert x.dtype == torch.float32 and torch.equal(y, train.labels)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


# ------------------------------------------------------------------------------------------- generated


@pytest.mark.parametrize(("name", "k"), [("shapes", 4), ("long_range", 2)])
def test_generated_sets_are_deterministic_balanced_and_split_into_disjoint_streams(name, k):
    sizes = {"n_train": 200, "n_test": 40}
    train, test = load(name, "train", seed=1, **sizes), load(name, "test", seed=1, **sizes)
    assert train.images.shape == (200, 3, 32, 32) and test.images.shape == (40, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.num_classes == k
    assert torch.bincount(train.labels).tolist() == [200 // k] * k
    assert torch.bincount(test.labels).tolist() == [40 // k] * k
    again = load(name, "train", seed=1, **sizes)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert not torch.equal(load(name, "train", seed=2, **sizes).images, train.images)
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in test.images)
    assert test.mean == train.mean


def test_shapes_are_drawn_as_their_label():
    data = load("shapes", "train", n_train=400)
    masks = data.images.amax(dim=1) >= FOREGROUND  # (N, 32, 32): exactly the shape's pixels
    for mask, label in zip(masks, data.labels.tolist(), strict=True):
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        fill = float(box.float().mean())
        name = data.classes[label]
        if name == "square":
            assert fill == 1.0
        elif name == "circle":
            assert 0.6 < fill < 0.95 and not box[0, 0] and not box[-1, -1]
        elif name == "triangle":  # apex up: the top row is narrower than the base
            assert int(box[0].sum()) < int(box[-1].sum()) == box.shape[1]
        else:  # a plus sign: empty corners, full middle row and column
            assert name == "cross" and not box[0, 0] and not box[-1, -1] and not box[0, -1]
            assert bool(box.all(1).any()) and bool(box.all(0).any())


def _markers(images):
    """(top colour index, bottom colour index, top box, bottom box) of each long_range image."""
    palette = torch.tensor(PALETTE, dtype=torch.uint8)
    found = []
    for img in images:
        mask = img.amax(0) >= FOREGROUND  # (32, 32)
        assert int(mask.sum()) == 2 * 16  # two 4x4 markers, nothing else
        out = []
        for half in (slice(0, 16), slice(16, 32)):
            part = torch.zeros_like(mask)
            part[half] = mask[half]
            ys, xs = part.nonzero(as_tuple=True)
            assert len(ys) == 16 and int(ys.max() - ys.min()) == 3 and int(xs.max() - xs.min()) == 3
            colour = img[:, ys[0], xs[0]]
            assert (img[:, ys, xs] == colour[:, None]).all()  # a solid marker
            out.append((int((palette == colour).all(1).nonzero()), (int(ys.min()), int(xs.min()))))
        found.append((out[0][0], out[1][0], out[0][1], out[1][1]))
    return found


def test_long_range_label_is_whether_two_far_apart_markers_share_a_colour():
    data = load("long_range", "train", seed=3, n_train=1800)
    markers = _markers(data.images)
    for (top, bottom, (ty, tx), (by, bx)), label in zip(markers, data.labels.tolist(), strict=True):
        assert label == int(top == bottom)
        assert by - (ty + 4) >= 12 and (tx < 16) != (bx < 16)  # opposite corners, >= 12 pixels apart
        assert abs(bx - tx) - 4 >= 12
    # Each marker alone says nothing: P(same | its colour) is 1/2 for every colour, either marker.
    labels = data.labels.double()
    for which in (0, 1):
        colours = torch.tensor([m[which] for m in markers])
        for c in range(len(PALETTE)):
            rate = float(labels[colours == c].mean())
            assert abs(rate - 0.5) < 0.1, (which, c, rate)


# ----------------------------------------------------------------------------------------------- cifar


def _write(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _fake_cifar10(root, n=4, protocol=pickle.DEFAULT_PROTOCOL):
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        _write(root / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels}, protocol)
    _write(root / "batches.meta", {b"label_names": [f"class{j}".encode() for j in range(10)]}, protocol)


class _Shell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __reduce__(self):
        return eval, ("__import__('os').system('true')",)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])  # 2: bytes as _codecs.encode(text, "latin1")
def test_cifar10_batches_load_in_their_published_layout(tmp_path, protocol):
    _fake_cifar10(tmp_path, protocol=protocol)
    train, test = load(f"cifar10:{tmp_path}", "train"), load(f"cifar10:{tmp_path}", "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.classes[3] == "class3" and train.num_classes == 10
    first = pickle.loads((tmp_path / "data_batch_1").read_bytes())
    # Row-major R, G, B planes: pixel (c, y, x) is column c·1024 + y·32 + x.
    assert np.array_equal(train.images[1].numpy(), first[b"data"][1].reshape(3, 32, 32))
    assert train.labels[:4].tolist() == first[b"labels"] and train.labels.dtype == torch.int64
    assert test.mean == train.mean


def test_cifar100_uses_fine_labels(tmp_path):
    data = np.zeros((3, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        _write(tmp_path / name, {b"data": data, b"fine_labels": [0, 57, 99], b"coarse_labels": [0, 1, 2]})
    _write(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    test = load(f"cifar100:{tmp_path}", "test")
    assert test.labels.tolist() == [0, 57, 99] and test.num_classes == 100 and test.classes[57] == "f57"


class _Codec:
    """Asks `_codecs.encode`, which protocol 2 needs for bytes, for another codec than latin-1."""

    def __reduce__(self):
        import codecs

        return codecs.encode, ("print('hi')", "rot13")


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (_Shell, "system"),
        (_Eval, r"(builtins|__builtin__)\.eval"),
        (_Codec, "_codecs.encode of a str with encoding 'rot13'"),
    ],
)
def test_a_malicious_batch_is_refused_without_running(tmp_path, payload, named, protocol):
    _fake_cifar10(tmp_path, protocol=protocol)
    canary = tmp_path / "pwned"
    evil = payload(f"touch {canary}") if payload is _Shell else payload()
    _write(tmp_path / "data_batch_1", {b"data": evil, b"labels": [0]}, protocol)
    with pytest.raises(
        UnsafePickleError, match=rf"refusing to unpickle .*data_batch_1: it asks for .*{named}"
    ):
        load(f"cifar10:{tmp_path}", "train")
    assert not canary.exists()


def test_cifar_missing_corrupt_and_malformed_files_are_named(tmp_path):
    _fake_cifar10(tmp_path)
    spec = f"cifar10:{tmp_path}"
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load(spec, "train")
    _fake_cifar10(tmp_path)
    raw = (tmp_path / "data_batch_2").read_bytes()
    (tmp_path / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"corrupt CIFAR file .*data_batch_2"):
        load(spec, "train")
    _fake_cifar10(tmp_path)
    _write(tmp_path / "test_batch", {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match=r"test_batch.*\(N, 3072\) uint8"):
        load(spec, "test")
    _write(tmp_path / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match=r"test_batch.*\[0, 10\)"):
        load(spec, "test")
    _write(tmp_path / "test_batch", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(ValueError, match=r"test_batch.*b'labels'"):
        load(spec, "test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(f"cifar10:{tmp_path / 'nowhere'}", "test")


def test_cifar_checksums_are_checked_on_full_size_files(tmp_path, monkeypatch):
    _fake_cifar10(tmp_path)
    spec = f"cifar10:{tmp_path}"
    assert len(load(spec, "train", verify="auto")) == 20  # small files are not the published ones
    with pytest.raises(ValueError, match=r"checksum mismatch for .*data_batch_1"):
        load(spec, "train", verify="strict")
    monkeypatch.setitem(cifar_module.PUBLISHED_COUNT, "data_batch_4", 4)  # now it claims to be real
    with pytest.raises(ValueError, match=r"checksum mismatch for .*data_batch_4"):
        load(spec, "train")
    assert len(load(spec, "train", verify="off")) == 20
    # With the right sums every file (meta included) passes, in both checking modes.
    for path in tmp_path.iterdir():
        monkeypatch.setitem(cifar_module.MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
        monkeypatch.setitem(cifar_module.PUBLISHED_COUNT, path.name, 4)
    assert len(load(spec, "test")) == len(load(spec, "test", verify="strict")) == 4
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}))
    with pytest.raises(ValueError, match=r"checksum mismatch for .*batches\.meta"):
        load(spec, "test")


# ---------------------------------------------------------------------------------------------- folder


def _png(path, colour, size=(10, 6), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_folder_of_class_subfolders_is_read_resized_and_split(tmp_path):
    for i in range(5):
        _png(tmp_path / "dog" / f"{i}.png", (0, 0, 255))
        _png(tmp_path / "cat" / f"{i}.png", (255, 0, 0), size=(7, 13))
    _png(tmp_path / "cat" / "grey.png", 128, mode="L")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    train, test = load(f"folder:{tmp_path}", "train", image_size=8), load(f"folder:{tmp_path}", "test")
    assert train.classes == ("cat", "dog") and train.images.shape == (9, 3, 8, 8)
    assert test.images.shape == (2, 3, 32, 32) and sorted(test.labels.tolist()) == [0, 1]
    colours = train.images[:, :, 4, 4]  # (N, 3): every image is one colour
    for colour, label in zip(colours.tolist(), train.labels.tolist(), strict=True):
        assert colour in ([255, 0, 0], [128, 128, 128]) if label == 0 else colour == [0, 0, 255]
    assert load(f"folder:{tmp_path}", "test").labels.tolist() == test.labels.tolist()  # fixed split


def test_a_folder_that_cannot_score_a_classifier_is_refused(tmp_path):
    for i in range(5):
        _png(tmp_path / "one" / "cat" / f"{i}.png", (0, 0, 255))
    with pytest.raises(ValueError, match=r"one class sub-folder \('cat'\)"):  # it would score 100%
        load(f"folder:{tmp_path / 'one'}", "train")
    for name in ("cat", "dog"):  # 2 images per class: round(0.2 * 2) = 0 go to test
        for i in range(2):
            _png(tmp_path / "few" / name / f"{i}.png", (0, 0, 9 * i))
    with pytest.raises(ValueError, match="empty test split"):  # it would score 0%
        load(f"folder:{tmp_path / 'few'}", "test")
    for split in ("train", "test"):
        _png(tmp_path / "given" / split / "cat" / "0.png", (1, 2, 3))
    _png(tmp_path / "given" / "train" / "dog" / "0.png", (3, 2, 1))
    (tmp_path / "given" / "test" / "dog").mkdir()
    assert len(load(f"folder:{tmp_path / 'given'}", "test")) == 1  # a class absent from test is fine ...
    (tmp_path / "given" / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"\['emu'\] have no training images"):  # ... from train is not
        load(f"folder:{tmp_path / 'given'}", "train")


def _bomb_png(path, side):
    """A PNG header claiming side x side pixels, over a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize(("side", "said"), [(100_000, "10000000000 pixels"), (10_000, "10000x10000 pixels")])
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, side, said):
    import time

    for name in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / name / f"{i}.png", (0, 0, 9 * i))
    _bomb_png(tmp_path / "dog" / "huge.png", side)  # decoding it: side² · 3 bytes
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"refusing image .*huge\.png: .*{said}.*not decoded"):
        load(f"folder:{tmp_path}", "train")
    assert time.perf_counter() - start < 2


def test_folder_with_train_and_test_subfolders_keeps_the_users_split(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tmp_path / split / "a" / f"{i}.png", (10, 20, 30))
            _png(tmp_path / split / "b" / f"{i}.jpg", (200, 100, 0))
    train, test = load(f"folder:{tmp_path}", "train"), load(f"folder:{tmp_path}", "test")
    assert (len(train), len(test)) == (6, 4) and test.classes == ("a", "b")
    assert torch.bincount(test.labels).tolist() == [2, 2]
    (tmp_path / "test" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png"):
        load(f"folder:{tmp_path}", "test")


# ------------------------------------------------------------------------------------ augment, batches


def test_augment_crop_is_a_window_of_the_zero_padded_image_and_flip_a_mirror():
    x = torch.rand(64, 2, 5, 7)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, Augment(), g), x)
    assert torch.equal(augment_batch(x, Augment(crop_pad=0), g), x)
    out = augment_batch(x, Augment(crop_pad=2), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(64):
        windows = [
            (a, b)
            for a in range(5)
            for b in range(5)
            if torch.equal(padded[i, :, a : a + 5, b : b + 7], out[i])
        ]
        assert windows, i
        shifts.add(windows[0])
    assert len(shifts) > 10
    again = augment_batch(x, Augment(crop_pad=2), torch.Generator().manual_seed(1))
    assert torch.equal(again, out)
    flipped = augment_batch(x, Augment(flip=True), g)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def _indexed(n):
    """A set whose normalised pixel equals the sample's index, so batches reveal their indices."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageSet(images, torch.arange(n) % 3, ("a", "b", "c"), "indexed", "train", (0.0,), (1.0,), 1.0)


def test_batches_cover_every_sample_once_per_epoch_in_an_order_set_by_seed_and_epoch():
    data = _indexed(23)

    def order(**kw):
        return [x[:, 0, 0, 0].long().tolist() for x, _ in batches(data, 5, **kw)]

    epoch0 = order(seed=0, epoch=0)
    assert [len(b) for b in epoch0] == [5, 5, 5, 5, 3]
    assert sorted(i for b in epoch0 for i in b) == list(range(23))
    assert order(seed=0, epoch=0) == epoch0
    assert order(seed=0, epoch=1) != epoch0 and order(seed=1, epoch=0) != epoch0
    assert [len(b) for b in order(seed=0, epoch=0, drop_last=True)] == [5, 5, 5, 5]
    assert [i for b in order(seed=0, epoch=0, shuffle=False) for i in b] == list(range(23))
    assert order(seed=0, epoch=0, start=3) == epoch0[3:]  # resume mid-epoch
    _, labels = next(iter(batches(data, 5, seed=0, epoch=0)))
    assert labels.tolist() == [i % 3 for i in epoch0[0]]


def test_batches_are_reproducible_with_augmentation():
    data = load("shapes", "train", n_train=40)
    aug = default_augment(data)
    assert aug == Augment(crop_pad=4, flip=True) and default_augment(load("digits", "test")) == Augment(1)
    first = list(batches(data, 16, seed=5, epoch=2, augment=aug))
    again = list(batches(data, 16, seed=5, epoch=2, augment=aug))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert first[0][0].shape == (16, 3, 32, 32) and first[0][0].dtype == torch.float32
    other = next(iter(batches(data, 16, seed=5, epoch=3, augment=aug)))
    assert not torch.equal(other[0], first[0][0])


@pytest.mark.parametrize(("n", "drop_last"), [(22, False), (23, False), (23, True)])
def test_ranks_together_see_the_single_process_global_batch(n, drop_last):
    data = load("shapes", "train", n_train=n)
    kw = {"seed": 9, "epoch": 4, "augment": Augment(crop_pad=2, flip=True), "drop_last": drop_last}
    single = list(batches(data, 6, **kw))
    ranks = [list(batches(data, 3, rank=r, world_size=2, **kw)) for r in range(2)]
    assert (
        len(ranks[0]) == len(ranks[1]) == len(single) == num_batches(n, 3, world_size=2, drop_last=drop_last)
    )
    for step, (x, y) in enumerate(single):
        (x0, y0), (x1, y1) = ranks[0][step], ranks[1][step]
        assert len(x0) == len(x1)  # every rank steps with the same batch size
        both_x = torch.stack([x0, x1], 1).flatten(0, 1)  # interleave: rank 0, rank 1, rank 0, ...
        both_y = torch.stack([y0, y1], 1).flatten(0, 1)
        assert torch.equal(both_x[: len(x)], x) and torch.equal(both_y[: len(y)], y)
        assert len(both_x) - len(x) == (1 if n % 2 and not drop_last and step == len(single) - 1 else 0)
    seen = torch.cat([y for r in ranks for _, y in r])
    assert len(seen) == (n + n % 2 if not drop_last else 18)


@pytest.mark.parametrize("n", [0, 1, 7, 24])
@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_num_batches_counts_what_batches_yields(n, world_size, drop_last):
    data = _indexed(n) if n else _indexed(1).subset(slice(0, 0))
    kw = {"seed": 0, "epoch": 0, "world_size": world_size, "drop_last": drop_last}
    got = [len(list(batches(data, 2, rank=r, **kw))) for r in range(world_size)]
    assert got == [num_batches(n, 2, world_size=world_size, drop_last=drop_last)] * world_size


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("spec", "options", "error", "words"),
    [
        ("digit", {}, ValueError, "did you mean 'digits'"),
        ("longrange", {}, ValueError, "did you mean 'long_range'"),
        ("imagenet", {}, ValueError, "unknown data set 'imagenet'"),
        ("cifar10", {}, ValueError, "cifar10:PATH"),
        ("digits:somewhere", {}, ValueError, "takes no path"),
        ("digits", {"split": "val"}, ValueError, "split='val'"),
        ("digits", {"n_test": 10}, ValueError, "n_test applies to generated sets only"),
        ("shapes", {"n_test": 0}, ValueError, "n_test must be >= 1"),
        ("digits", {"verify": "maybe"}, ValueError, "verify='maybe'"),
        (3, {}, TypeError, "str"),
    ],
)
def test_bad_load_arguments_are_named(spec, options, error, words):
    split = options.pop("split", "train")
    with pytest.raises(error, match=words):
        load(spec, split, **options)


def test_bad_batching_arguments_are_named():
    data = _indexed(4)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got batch_size=0"):
        batches(data, 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="rank=2"):
        batches(data, 2, seed=0, epoch=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="epoch=-1"):
        batches(data, 2, seed=0, epoch=-1)
    with pytest.raises(ValueError, match="crop_pad=-1"):
        Augment(crop_pad=-1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ImageSet(data.images, data.labels + 1, ("a", "b", "c"), "x", "train", (0.0,), (1.0,))


def test_list_datasets_names_every_spec():
    assert list_datasets() == [
        "digits",
        "digits32",
        "shapes",
        "long_range",
        "cifar10:PATH",
        "cifar100:PATH",
        "folder:PATH",
    ]


# -- n_train: nested, class-stratified subsets ------------------------------------------------------


def test_digit_subsets_are_stratified_nested_and_deterministic():
    full = load("digits", "train")
    per_class = torch.bincount(full.labels, minlength=10).double()
    order = subset_order(full.labels.numpy(), 0, len(full))
    assert sorted(order.tolist()) == list(range(len(full)))  # a permutation
    # Every prefix holds each class within one image of its share (the greedy's promise).
    counts = np.cumsum(np.eye(10)[full.labels.numpy()[order]], axis=0)  # (N, 10)
    share = np.arange(1, len(full) + 1)[:, None] * (per_class.numpy() / len(full))
    assert np.abs(counts - share).max() < 1
    previous: Counter[bytes] = Counter()
    for n in (10, 72, 144, 500, 1438):
        sub = load("digits", "train", n_train=n, seed=0)
        assert len(sub) == n and sub.mean == full.mean and sub.std == full.std
        assert (torch.bincount(sub.labels, minlength=10) - n * per_class / len(full)).abs().max() < 1
        keys = Counter(
            bytes(img.numpy()) + bytes([int(y)]) for img, y in zip(sub.images, sub.labels, strict=True)
        )
        assert not previous - keys  # nested: every image of the smaller subset is in the larger one
        previous = keys
        again = load("digits", "train", n_train=n, seed=0)
        assert torch.equal(again.images, sub.images) and torch.equal(again.labels, sub.labels)
    assert torch.equal(load("digits", "train", n_train=1438).images, full.images)  # all: the split as is
    other_seed = load("digits", "train", n_train=144, seed=1)
    assert not torch.equal(other_seed.images, load("digits", "train", n_train=144).images)
    assert torch.bincount(load("digits", "train", n_train=10).labels, minlength=10).tolist() == [1] * 10


def test_n_train_leaves_the_test_split_untouched():
    test = load("digits", "test")
    small = load("digits", "test", n_train=72, seed=3)
    assert torch.equal(small.images, test.images) and torch.equal(small.labels, test.labels)
    assert small.tensors()[0].equal(test.tensors()[0])  # same normalisation too


@pytest.mark.parametrize(("n_train", "error", "words"), [
    (1439, ValueError, "n_train=1439 exceeds the 1438 training images of digits"),
    (9, ValueError, "n_train=9 is below the 10 classes of digits"),
    (0, ValueError, "n_train must be >= 1"),
    (2.5, TypeError, "n_train must be an int"),
])  # fmt: skip
def test_bad_n_train_is_named(n_train, error, words):
    for split in ("train", "test"):
        with pytest.raises(error, match=words):
            load("digits", split, n_train=n_train)


def test_generated_sets_keep_their_n_train():
    assert len(load("shapes", "train", n_train=40)) == 40


# -- holdout: a validation split from the end of the stratified order -------------------------------


def _keys(data: ImageSet) -> Counter[bytes]:
    """Each image with its label, as a multiset of byte strings."""
    return Counter(
        bytes(img.numpy()) + bytes([int(y)]) for img, y in zip(data.images, data.labels, strict=True)
    )


def test_digit_holdout_is_the_stratified_end_of_the_subset_order_and_the_rest_trains():
    from convattn.data.imageset import channel_stats

    full, H = load("digits", "train", seed=4), 288
    val, rest = load("digits", "val", holdout=H, seed=4), load("digits", "train", holdout=H, seed=4)
    assert (len(val), len(rest), val.split, rest.split) == (H, len(full) - H, "val", "train")
    # The rule: the last H of the order are val, the first N - H the rest, each in the split's own order.
    order = subset_order(full.labels.numpy(), 4, len(full))
    for part, index in ((val, order[-H:]), (rest, order[:-H])):
        expect = full.subset(torch.from_numpy(np.sort(index)))
        assert torch.equal(part.images, expect.images) and torch.equal(part.labels, expect.labels)
    assert _keys(val) + _keys(rest) == _keys(full)  # disjoint, and together the whole training split
    per_class = torch.bincount(full.labels, minlength=10).double()
    assert (torch.bincount(val.labels, minlength=10) - H * per_class / len(full)).abs().max() < 1
    # Statistics of the rest, for all three splits; the test images themselves do not change.
    test, plain = load("digits", "test", holdout=H, seed=4), load("digits", "test")
    assert (rest.mean, rest.std) == channel_stats(rest.images, 16.0)
    assert val.mean == rest.mean == test.mean != full.mean and val.std == rest.std == test.std
    assert torch.equal(test.images, plain.images) and torch.equal(test.labels, plain.labels)
    # Deterministic for a seed, another for another seed.
    again = load("digits", "val", holdout=H, seed=4)
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    assert _keys(load("digits", "val", holdout=H, seed=5)) != _keys(val)


def test_n_train_within_a_holdout_is_the_same_nested_subset_as_without():
    H = 300
    val, rest = load("digits", "val", holdout=H), load("digits", "train", holdout=H)
    previous: Counter[bytes] = Counter()
    for n in (10, 72, 144, 500, 1138):
        sub = load("digits", "train", n_train=n, holdout=H)
        plain = load("digits", "train", n_train=n)
        assert torch.equal(sub.images, plain.images) and torch.equal(sub.labels, plain.labels)
        assert sub.mean == rest.mean and sub.std == rest.std  # the statistics of what it is drawn from
        assert not _keys(sub) - _keys(rest) and not previous - _keys(sub)  # inside the rest, nested
        previous = _keys(sub)
    assert previous == _keys(rest)  # n_train = N - H: the whole rest
    assert _keys(val) + _keys(rest) == _keys(load("digits", "train"))


def test_holdout_zero_is_no_holdout():
    for split in ("train", "test"):
        a, b = load("digits", split, holdout=0, n_train=100), load("digits", split, n_train=100)
        assert torch.equal(a.images, b.images) and a.mean == b.mean and a.std == b.std


def _folder_of_distinct_images(root):
    for k, name in enumerate(("cat", "dog")):
        for i in range(5):
            _png(root / name / f"{i}.png", (40 * i, 100 * k, 7))
    return f"folder:{root}"


@pytest.mark.parametrize("kind", ["shapes", "long_range", "cifar10", "folder"])
def test_every_data_set_holds_out_a_stratified_disjoint_part(tmp_path, kind):
    if kind == "cifar10":
        _fake_cifar10(tmp_path)
        spec, options, whole, H = f"cifar10:{tmp_path}", {}, load(f"cifar10:{tmp_path}", "train"), 5
    elif kind == "folder":
        spec, options, H = _folder_of_distinct_images(tmp_path), {}, 2
        whole = load(spec, "train")
    else:  # generated at n_train + H images and divided: it still trains on n_train
        spec, options, H = kind, {"n_train": 48, "n_test": 8}, 16
        whole = load(kind, "train", seed=2, n_train=48 + H, n_test=8)
    val, rest = (load(spec, split, seed=2, holdout=H, **options) for split in ("val", "train"))
    assert len(val) == H and len(rest) == len(whole) - H and _keys(val) + _keys(rest) == _keys(whole)
    per_class = torch.bincount(whole.labels, minlength=whole.num_classes).double()
    share = H * per_class / len(whole)
    assert (torch.bincount(val.labels, minlength=whole.num_classes) - share).abs().max() < 1
    test = load(spec, "test", seed=2, holdout=H, **options)
    assert test.mean == val.mean == rest.mean != whole.mean
    plain = load(spec, "test", seed=2, **options)
    assert torch.equal(test.images, plain.images) and torch.equal(test.labels, plain.labels)


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"holdout": -1}, ValueError, "holdout must be >= 0.*holdout=-1"),
    ({"holdout": 1.5}, TypeError, "holdout must be an int, got holdout=1.5"),
    ({"holdout": True}, TypeError, "holdout must be an int, got holdout=True"),
    ({"holdout": "10"}, TypeError, "holdout must be an int, got holdout='10'"),
    ({"holdout": 1438}, ValueError, "holdout=1438 must be below the 1438 training images of digits"),
    ({"holdout": 1430}, ValueError, "holdout=1430 leaves 8 of the 1438 training images of digits, fewer "
                                    "than its 10 classes"),
    ({"holdout": 300, "n_train": 1139}, ValueError, "n_train=1139 exceeds the 1138 training images of "
                                                    "digits left after holdout=300"),
    ({"holdout": 300, "n_train": 9}, ValueError, "n_train=9 is below the 10 classes"),
])  # fmt: skip
def test_bad_holdouts_are_named(options, error, words):
    for split in ("train", "val", "test"):
        with pytest.raises(error, match=words):
            load("digits", split, **options)


@pytest.mark.parametrize("holdout", [0, None])
def test_a_validation_split_needs_a_holdout(holdout):
    options = {} if holdout is None else {"holdout": holdout}
    with pytest.raises(ValueError, match="split='val' needs holdout > 0"):
        load("digits", "val", **options)
    with pytest.raises(
        ValueError, match=r"split must be one of \('train', 'val', 'test'\), got split='valid'"
    ):
        load("digits", "valid")
