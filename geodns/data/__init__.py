"""Data files shipped with geodns: the bundled country database and per-country points.

A package (rather than a plain folder) so that the files travel with installed wheels and can be
found next to this module; see README.md here for sources, licences and how to rebuild them.
"""
