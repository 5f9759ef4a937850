"""``python -m reftx.cli`` = ``reftx``."""
import sys

from reftx.cli.commands import main

sys.exit(main())
