"""``python -m bridge.sim`` is ``kbridge sim``: serve a simulated cluster without the console script."""

from __future__ import annotations

import sys

from bridge.cli import main

if __name__ == "__main__":
    sys.exit(main(["sim", *sys.argv[1:]]))
