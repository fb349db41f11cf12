"""Command-line entry points (``srt-train``, ``srt-eval``; ``python -m srt.demo`` goes through them too)."""

import os

# OpenMP reads its wait policy once, when torch loads it, so this runs before anything imports torch.
# With the default (spin-waiting) policy, idle OpenMP threads keep their cores busy: on a shared or
# oversubscribed CPU they take the time the other threads and jobs need, and multi-threaded decoding
# collapses (benchmarks/RESULTS-generation.md). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
