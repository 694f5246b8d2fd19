import sys

from zxl.cli import main

sys.exit(main())
