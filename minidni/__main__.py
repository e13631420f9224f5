"""`python -m minidni ...`: see minidni.cli."""

import sys

from minidni.cli import main

sys.exit(main())
