"""``python -m medad_monai.comparison SPEC_JSON METHOD RESULT_JSON``: one method of a comparison (the runner's child
process; see :mod:`medad_monai.comparison.worker`)."""

from medad_monai.comparison.worker import main

main()
