"""``python -m reftx`` = ``reftx``: what ``accelerate launch -m reftx run EXP.yaml`` starts in every process."""
import sys

from reftx.cli.commands import main

sys.exit(main())
