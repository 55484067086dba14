"""Helpers with no knowledge of configs or training: logging."""
