"""Entry point for `python -m firstboot` and for the frozen executable."""

import sys

from firstboot.cli import main

if __name__ == "__main__":
    sys.exit(main())
