"""Built-in srt plugins: critics and benchmarks, registered through entry points like any third-party plugin."""
