"""Foundations every layer uses: the error family, YAML with line numbers, bounded caches, logging."""
