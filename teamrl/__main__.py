import sys

from teamrl.cli.commands import main

sys.exit(main())
