"""``python -m srt.demo`` (``make demo``): see :mod:`srt.demo.run_demo`."""

from srt.demo.run_demo import main

if __name__ == "__main__":
    main()
