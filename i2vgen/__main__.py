"""`python -m i2vgen ...` is the `i2vgen` command, so that torchrun can start it:
`torchrun --nproc-per-node N -m i2vgen generate --jobs jobs.jsonl --out-dir videos`."""

import sys

from i2vgen.apps.cli import main

sys.exit(main())
