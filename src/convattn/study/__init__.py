"""`convattn study`: every section of the study into one run folder, resumably, and its report."""

from convattn.study.runner import StudyConfig, StudyInterrupted, find_run_dir, new_run_dir, redraw, run_study

__all__ = ["StudyConfig", "StudyInterrupted", "find_run_dir", "new_run_dir", "redraw", "run_study"]

from convattn.utils.lazy import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__, globals())
