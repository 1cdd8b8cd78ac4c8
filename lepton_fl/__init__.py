"""Lepton FL: the vocabulary shared by the coordinator and the nodes."""

__version__ = "0.1.0"
