"""`python -m core.scan`: scan observations for landmarks (core.scan.scanner)."""
import sys

from core.scan.scanner import main

sys.exit(main())
