import sys

from frcnn_lab.report.cli import main

sys.exit(main())
