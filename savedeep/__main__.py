"""``python -m savedeep`` is the ``savedeep`` command."""

import sys

from savedeep.cli import main

sys.exit(main())
