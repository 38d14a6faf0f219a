"""`python -m minift.cli ...` (as torchrun runs it): the `minift` command."""

import sys

from minift.cli import main

if __name__ == "__main__":  # imported (by a test, say), it runs nothing
    sys.exit(main())
