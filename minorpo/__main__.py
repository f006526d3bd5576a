import sys

from minorpo.cli import main

sys.exit(main())
