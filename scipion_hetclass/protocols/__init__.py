"""hetclass protocols (pyworkflow discovers them through this module's names)."""

from .protocol_classify3d import HetClassProtClassify3D
from .protocol_stability import HetClassProtStability

__all__ = ["HetClassProtClassify3D", "HetClassProtStability"]
