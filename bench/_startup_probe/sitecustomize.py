"""Start-up probe for bench/startup.py: on PYTHONPATH, Python imports it before anything else.

When their modules are first imported it wraps Lightning's one-training-batch step
(`_TrainingEpochLoop.advance`) and a trial's latency measurement (`_Trial.measure`); on the first
call of each it prints `FIRST_BATCH <seconds>` (or `FIRST_MEASURE <seconds>`) to stderr, the
seconds since `TNSEARCH_BENCH_T0` (the bench's Unix time at launch). tnsearch itself is not
changed: the bench kills the process once FIRST_BATCH appears.
"""

import importlib.abc
import importlib.util
import os
import sys
import time

#: module -> (class, method, the line's name)
_TARGETS = {
    "lightning.pytorch.loops.training_epoch_loop": ("_TrainingEpochLoop", "advance", "FIRST_BATCH"),
    "tnsearch.study.trial": ("_Trial", "measure", "FIRST_MEASURE"),
}


def _wrap(module) -> None:
    cls_name, name, line = _TARGETS[module.__name__]
    cls = getattr(module, cls_name, None)
    method = getattr(cls, name, None)
    if method is None:
        return

    def first(self, *args, **kwargs):
        setattr(cls, name, method)  # once is enough
        t0 = float(os.environ.get("TNSEARCH_BENCH_T0", "nan"))
        print(f"{line} {time.time() - t0:.3f}", file=sys.stderr, flush=True)
        return method(self, *args, **kwargs)

    setattr(cls, name, first)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("TNSEARCH_BENCH_T0"):
    sys.meta_path.insert(0, _Finder())
