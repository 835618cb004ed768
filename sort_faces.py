#!/usr/bin/env python3
"""face-sets command line: `python sort_faces.py <command> ...` (see --help)."""
import sys

from facesets.cli import main

if __name__ == "__main__":
    sys.exit(main())
