"""`python -m mpimem`: mpimem.cli.main, whose first act is to install the signal handlers."""
import sys

try:
    from mpimem.cli import main
except KeyboardInterrupt:  # Ctrl-C in the instant before mpimem.cli exists: still one line
    print("mpimem: error: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
