"""CIFAR-10 / CIFAR-100 from the official python-pickle batches, read without trusting the pickle.

A pickle can name any importable callable and have it called while loading, so a file that merely
claims to be a CIFAR batch could run code. The batches are therefore read by `SafeUnpickler`, which
resolves only what the real files need — numpy array and dtype reconstruction and builtin containers,
plus, for batches pickled with protocol 2 under Python 3, `_codecs.encode` limited to turning text
into latin-1 bytes — and refuses anything else before it is called. Every batch is then checked: a dict
with b"data" of shape (N, 3072) uint8 (row-major R, G, B planes of 32×32) and N labels in range.

Checksums: the published MD5 of each file is checked when ``verify="strict"``, never with ``"off"``,
and with ``"auto"`` (the default) whenever a file holds the published number of images — that is, when
it claims to be the real file — so small hand-made batches (tests, subsets) load while a damaged or
altered download does not.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from convattn.data.imageset import ImageSet, make_splits

__all__ = ["MD5", "PUBLISHED_COUNT", "VERIFY_MODES", "SafeUnpickler", "UnsafePickleError", "load_cifar"]

VERIFY_MODES = ("auto", "strict", "off")
LAYOUT = {
    # name: (train files, test file, meta file, label key, label-names key, number of classes)
    "cifar10": (
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
    ),
    "cifar100": (("train",), "test", "meta", b"fine_labels", b"fine_label_names", 100),
}
MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
PUBLISHED_COUNT = {**{f"data_batch_{i}": 10_000 for i in range(1, 6)}, "test_batch": 10_000}
PUBLISHED_COUNT.update({"train": 50_000, "test": 10_000})

_NUMPY_CORE = {"_reconstruct": "multiarray", "scalar": "multiarray", "_frombuffer": "numeric"}
_BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "bytearray"})


class UnsafePickleError(ValueError):
    """A pickle asked for something a CIFAR batch never holds; nothing it named was called."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array/dtype reconstruction, builtin containers, and the
    latin-1 encoding protocol-2 pickles written by Python 3 use for bytes."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2: str -> bytes
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed global `module.name`, or raise UnsafePickleError without importing it."""
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # protocol 2 under Python 3 spells bytes this way
            return self._latin1
        sub = _NUMPY_CORE.get(name)
        if sub is not None and module in (f"numpy.core.{sub}", f"numpy._core.{sub}"):
            return getattr(_numpy_core(sub), name)
        raise UnsafePickleError(
            f"refusing to unpickle {self.path}: it asks for {module}.{name}; "
            "CIFAR batches hold only arrays and lists"
        )

    def _latin1(self, text: object, encoding: object = "latin1") -> bytes:
        """`_codecs.encode` as a protocol-2 pickle calls it for bytes objects: a str to latin-1 bytes.

        Any other use (another codec, or something else than a str) is refused: codecs are a plugin
        registry, and a CIFAR batch needs only this one.
        """
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(
                f"refusing to unpickle {self.path}: it asks for _codecs.encode of a "
                f"{type(text).__name__} with encoding {encoding!r}; CIFAR batches need latin-1 text only"
            )
        return text.encode("latin-1")


def _numpy_core(sub: str) -> Any:
    """numpy's core submodule (numpy._core since numpy 2, numpy.core before)."""
    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # numpy < 1.26
        return importlib.import_module(f"numpy.core.{sub}")


def _read(path: Path, verify: str) -> tuple[bytes, Any]:
    """The file's bytes and its safely unpickled content; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path} (expected the python-pickle batches here)")
    raw = path.read_bytes()
    if verify == "strict":  # check before unpickling anything
        _check_md5(path, raw)
    try:
        return raw, SafeUnpickler(io.BytesIO(raw), path).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # a truncated or garbled pickle fails in many ways
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"corrupt CIFAR file {path}: cannot unpickle it ({why})") from err


def _check_md5(path: Path, raw: bytes) -> None:
    """Raise ValueError naming the file unless its MD5 is the published one."""
    expected = MD5.get(path.name)
    if expected is None:
        raise ValueError(f"no published checksum for {path}")
    got = hashlib.md5(raw).hexdigest()
    if got != expected:
        raise ValueError(
            f"checksum mismatch for {path}: md5 {got}, published {expected}; the file is damaged or altered "
            "(re-download it, or pass verify='off' to load it anyway)"
        )


def _batch(path: Path, label_key: bytes, num_classes: int, verify: str) -> tuple[Tensor, Tensor, bool]:
    """One batch as (N, 3, 32, 32) uint8 images, (N,) labels, and whether it has the published size."""
    raw, batch = _read(path, verify)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} is not a CIFAR batch: need keys b'data' and {label_key!r}, got {keys}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: b'data' must be (N, 3072) uint8, got {shape} {getattr(data, 'dtype', '')}")
    n = data.shape[0]
    if labels.size == 0:
        labels = labels.astype(np.int64)  # np.asarray([]) is float
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: need {n} integer labels, got shape {labels.shape} of {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    full = n == PUBLISHED_COUNT.get(path.name)
    if verify == "auto" and full:
        _check_md5(path, raw)
    images = torch.from_numpy(data.reshape(n, 3, 32, 32).copy())  # (N, 3072) -> (N, 3, H, W)
    return images, torch.from_numpy(labels.astype(np.int64)), full


def _class_names(path: Path, key: bytes, num_classes: int, verify: str) -> tuple[str, ...]:
    """Class names from the meta file, decoded from bytes."""
    _, meta = _read(path, verify)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes:
        raise ValueError(f"{path}: need {key!r} with {num_classes} class names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar(name: str, root: str | Path, *, verify: str = "auto") -> tuple[ImageSet, ImageSet]:
    """Both splits of CIFAR-10 or CIFAR-100 from the folder of python batches (Krizhevsky 2009).

    Args:
        name: "cifar10" (data_batch_1..5, test_batch, batches.meta) or "cifar100" (train, test, meta;
            the 100 fine labels).
        root: the folder holding those files (e.g. the extracted cifar-10-batches-py).
        verify: "auto", "strict" or "off": when to check the published MD5 (see the module docstring).

    Returns:
        (train, test) with (3, 32, 32) uint8 images.

    Raises:
        FileNotFoundError: a file is missing (the message names it).
        ValueError: a file is corrupt, has the wrong layout, or fails its checksum (named), or it asks
            for anything but arrays and containers (UnsafePickleError, a ValueError).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got verify={verify!r}")
    train_files, test_file, meta_file, label_key, names_key, k = LAYOUT[name]
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR folder not found: {root}")
    parts = [_batch(root / f, label_key, k, verify) for f in (*train_files, test_file)]
    # "auto" trusts a meta file only once every batch proved to be the real one.
    meta_verify = "strict" if verify == "strict" or (verify == "auto" and all(p[2] for p in parts)) else "off"
    classes = _class_names(root / meta_file, names_key, k, meta_verify)
    train = (torch.cat([p[0] for p in parts[:-1]]), torch.cat([p[1] for p in parts[:-1]]))
    return make_splits(name, train, parts[-1][:2], classes)
