import sys

from activator.cli.main import main

sys.exit(main())
