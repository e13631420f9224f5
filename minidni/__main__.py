"""`python -m minidni ...`: see minidni.cli."""

import sys

from .cli import main

sys.exit(main())
