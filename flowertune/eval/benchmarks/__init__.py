"""Every built-in benchmark module; importing this package fills ``flowertune.eval.benchmark.BENCHMARKS``."""

from __future__ import annotations

import importlib
import importlib.util

# one module per benchmark (multipl_e registers multiple-js and multiple-cpp); a module that is not
# present in this checkout yet is skipped rather than failing every other benchmark
_MODULES = ("pubmedqa", "medmcqa", "medqa", "careqa", "mmlu", "fpb", "fiqa", "tfns", "humaneval", "mbpp", "multipl_e")

for _name in _MODULES:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
