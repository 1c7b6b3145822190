import sys

from piddpm.cli import main

sys.exit(main())
