"""srt: Self-Refinement Tuning (Hu et al., ACL Findings 2024) as a modular trainer.

Core package. It defines the record schema, the critic template, the data module, the Lightning
modules and the pipeline. Critics and benchmarks are plugins (entry-point groups ``srt.critics``
and ``srt.benchmarks``); the core never imports a plugin.
"""

__version__ = "0.1.0"
