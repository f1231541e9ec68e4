"""`python -m fastvlmrl`: the `fastvlmrl` command."""

import sys

from fastvlmrl.cli import main

sys.exit(main())
