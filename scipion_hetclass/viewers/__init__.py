"""hetclass viewers (pyworkflow discovers them through this module's names)."""

from .viewer import HetClassViewer

__all__ = ["HetClassViewer"]
