"""Measuring tools: multiply-adds (`flops`), model tables (`summary`), the DWNet property table
(`properties`), the operator benchmark (`bench`), attention pictures (`viz`), sequence metrics
(`metrics`) and head-centre measures (`centres`)."""

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
