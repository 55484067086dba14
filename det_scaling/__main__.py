import sys

from det_scaling.cli import main

sys.exit(main())
