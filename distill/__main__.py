import sys

from sam_distill.cli import main

sys.exit(main())
