"""face-sets: sort a photo library by person and build face sets for face-swap tools.

The library behind ``sort_faces.py``; one module per concern (see docs/design.md).
"""

__version__ = "0.1.0"
