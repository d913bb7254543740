"""``python -m tangentlab``: the same as the ``tangentlab`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
