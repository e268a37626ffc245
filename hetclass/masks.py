"""Soft real-space masks (raised-cosine edges), centred at index ``box // 2``."""

from __future__ import annotations

import numpy as np


def soft_disk(box_px: int, radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """(b, b) float32 mask: 1 inside ``radius_px``, cosine fall-off over ``edge_px``."""
    c = np.arange(box_px) - box_px // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    return _soft(np.sqrt(x * x + y * y), radius_px, edge_px)


def soft_sphere(box_px: int, radius_px: float, edge_px: float = 3.0) -> np.ndarray:
    """(b, b, b) float32 mask: 1 inside ``radius_px``, cosine fall-off over ``edge_px``."""
    c = np.arange(box_px) - box_px // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return _soft(np.sqrt(x * x + y * y + z * z), radius_px, edge_px)


def soft_edge(distance_px, edge_px: float = 3.0) -> np.ndarray:
    """float32 raised-cosine fall-off of a distance outside a region (px): 1 at 0 or less,
    0 from ``edge_px`` on."""
    edge = max(float(edge_px), 1e-6)
    t = np.clip(np.asarray(distance_px) / edge, 0.0, 1.0)
    return (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _soft(r, radius_px, edge_px):
    return soft_edge(r - radius_px, edge_px)


DEFAULT_DIAMETER_FRACTION = 0.85   # of the box (RELION users typically leave ~15 % margin)


def default_diameter_A(box_px: int, pixel_size_A: float) -> float:
    """Default particle diameter: :data:`DEFAULT_DIAMETER_FRACTION` of the box."""
    return DEFAULT_DIAMETER_FRACTION * box_px * pixel_size_A
