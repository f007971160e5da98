"""`python -m packforcing_core COMMAND ...`: the command line lives in cli/ (see cli/main.py)."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
