import sys

from refimpl.mutants import main

sys.exit(main(sys.argv[1:]))
