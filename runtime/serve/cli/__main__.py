"""`python -m runtime.serve.cli`: the `memoir` command."""

import sys

from .main import main

sys.exit(main())
