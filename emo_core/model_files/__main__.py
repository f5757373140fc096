"""`python -m emo_core.model_files` = `emo-models`."""
import sys

from .cli import main

sys.exit(main())
