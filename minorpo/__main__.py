import sys

from minorpo.tools.cli import main

sys.exit(main())
