"""`python -m usageledger`: the command line."""

import sys

from usageledger.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
