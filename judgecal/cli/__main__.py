"""``python -m judgecal.cli``: the ``judgecal`` command, run as a module."""

from judgecal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
