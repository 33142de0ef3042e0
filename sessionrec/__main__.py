import sys

from sessionrec.cli import main

sys.exit(main())
