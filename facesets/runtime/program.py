"""How face-sets was started: the name every "run `... calibrate ...`" hint and every
"next:" line gives the user to type."""
from __future__ import annotations

import os
import sys

# set by the ./face-sets launcher to the name it was called by (and inherited by the
# commands one command starts, e.g. immich finalize's)
PROG_ENV = "FACESETS_PROG"


def program_name() -> str:
    """What the user typed to start face-sets: the launcher (``./face-sets``, as called), the
    installed ``face-sets`` command, else ``sort_faces.py``."""
    given = os.environ.get(PROG_ENV, "")
    if given and len(given) <= 200 and given.isprintable():
        return given
    name = os.path.basename(sys.argv[0] if sys.argv else "")
    return "face-sets" if name.startswith("face-sets") else "sort_faces.py"
