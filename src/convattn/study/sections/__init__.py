"""The sections of `convattn study`, one file each; each module defines `SECTION` (see `..section`)."""

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
