"""``python -m studies.cli``: the same as the ``attnflow`` command."""

import sys

from studies.cli.main import main

sys.exit(main())
