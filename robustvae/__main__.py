"""``python -m robustvae`` is the same as the ``robustvae`` console script."""

from robustvae.cli import run

if __name__ == "__main__":
    run()
