"""`python -m emo_core.render` = `emo-render`."""
import sys

from .cli import main

sys.exit(main())
