"""Entry point of the MONAI Application Package: ``python apps/deploy -i IN -o OUT -m MODEL`` (or, in a MAP,
with ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/``HOLOSCAN_MODEL_PATH``). Exits 1 with a one-line error
when nothing could be scored (no readable study, no bundle)."""

import sys

from medad_monai.deploy.app import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
