"""uringload: a wrk-style load generator on the uringserve native core.

The per-request work (send, frame, time, count) runs in C (uringserve's
loadgen.c on its own ring); this package plans the load, starts worker
processes, merges their HdrHistograms and reports.
"""

from .plan import Plan, Target, build_plan, parse_target
from .run import Result, run

__all__ = ["Plan", "Result", "Target", "build_plan", "parse_target", "run"]
