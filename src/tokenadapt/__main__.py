import sys

from tokenadapt.cli import main

sys.exit(main())
