"""``python -m pancseg_tf.cli``: the ``pancseg`` command."""

import sys

from pancseg_tf.cli import main

sys.exit(main())
