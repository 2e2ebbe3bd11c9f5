"""`python -m lsh_bitnet.collect DIR`: the collector's documented command line, kept at this name.

The collector lives in `lsh_bitnet.report.collect` (the report side); this module only runs its CLI.
"""
from lsh_bitnet.report.collect import main

if __name__ == "__main__":
    raise SystemExit(main())
