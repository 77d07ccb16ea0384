"""Shared tools of every layer of the package: input checks, records (CSV, markdown, atomic writes),
plotting, the environment of a run, and torchrun's process topology. Imports nothing else of convattn."""
