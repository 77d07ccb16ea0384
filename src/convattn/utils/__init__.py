"""Shared tools of every layer of the package: input checks, records (CSV, markdown, atomic writes),
plotting, the environment of a run, and torchrun's process topology. Imports nothing else of convattn."""

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
