"""Vectorised piecewise-affine backward warp: triangle rasterisation in numpy, then cv2.remap.

No Python loop over triangles per frame: every (triangle, grid point) candidate pair is
generated at once, tested with barycentric coordinates, and the source position of
each covered grid point is interpolated. The map is continuous across triangle edges,
so it is computed on a coarse grid and upsampled exactly (integer factor, centre
aligned) before the full-resolution ``cv2.remap``.
"""

from __future__ import annotations

import cv2
import numpy as np


def rasterise_map(
    dest: np.ndarray,
    source: np.ndarray,
    triangles: np.ndarray,
    roi: tuple[int, int, int, int],
    stride: int,
    source_triangles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Backward map (map_x, map_y) for the pixels of ``roi`` = (x0, y0, x1, y1).

    ``dest``/``source`` are (V, 2) vertex positions; ``triangles`` (T, 3) indices. Later
    triangles win where triangles overlap. Pixels outside every triangle map to themselves.
    ``source_triangles`` (T, 3): where each triangle samples, when not from itself.
    """
    x0, y0, x1, y1 = roi
    width, height = x1 - x0, y1 - y0
    # One extra grid cell on every side, so pixels at the roi's edges are interpolated
    # between grid points rather than extrapolated.
    pad = 1 if stride > 1 else 0
    grid_w, grid_h = -(-width // stride) + 2 * pad, -(-height // stride) + 2 * pad
    offset = (stride - 1) / 2.0
    # Grid point (i, j) sits at pixel (x0 + (i - pad)*stride + offset, ...), exactly where
    # cv2.resize by `stride` puts the centre of source pixel (i, j).
    origin = np.array([x0 - pad * stride + offset, y0 - pad * stride + offset])
    tri_dst = ((dest[triangles] - origin) / stride).astype(np.float64)  # (T, 3, 2) in grid units
    tri_src = source[triangles if source_triangles is None else source_triangles].astype(np.float64)
    # Only grid points inside a triangle's bounding box can be inside it: a small triangle
    # between grid points has none and is skipped (the map is only sampled at grid points).
    low, high = corner_bounds(tri_dst)
    lo = np.maximum(np.ceil(low - 1e-3).astype(np.int64), 0)
    hi = np.minimum(np.floor(high + 1e-3).astype(np.int64), [grid_w - 1, grid_h - 1])
    extent = hi - lo + 1
    # Per triangle, once: barycentric coordinates as planes over the grid (l = a*gx + b*gy + c)
    # and the affine map from a grid point to its source pixel minus the point's own pixel
    # position (the displacement). Degenerate triangles are dropped.
    a, b, c = tri_dst[:, 0], tri_dst[:, 1], tri_dst[:, 2]
    v0, v1 = b - a, c - a
    det = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    keep = (extent[:, 0] > 0) & (extent[:, 1] > 0) & (np.abs(det) > 1e-9)
    a, v0, v1, det = a[keep], v0[keep], v1[keep], det[keep]
    tri_src, lo, extent = tri_src[keep], lo[keep], extent[keep]
    inv = 1.0 / det
    # l1 = ((x - ax) * v1y - v1x * (y - ay)) / det ; l2 = (v0x * (y - ay) - (x - ax) * v0y) / det
    l1_plane = np.stack([v1[:, 1] * inv, -v1[:, 0] * inv, (v1[:, 0] * a[:, 1] - a[:, 0] * v1[:, 1]) * inv], 1)
    l2_plane = np.stack([-v0[:, 1] * inv, v0[:, 0] * inv, (a[:, 0] * v0[:, 1] - v0[:, 0] * a[:, 1]) * inv], 1)
    # source = s0 + l1 (s1 - s0) + l2 (s2 - s0); displacement = source - (grid * stride + origin)
    s0, d1, d2 = tri_src[:, 0], tri_src[:, 1] - tri_src[:, 0], tri_src[:, 2] - tri_src[:, 0]
    affine = (
        d1[:, :, None] * l1_plane[:, None, :] + d2[:, :, None] * l2_plane[:, None, :]
    )  # (T, 2 out, 3 coeffs: gx, gy, 1)
    affine[:, :, 2] += s0 - origin
    affine[:, 0, 0] -= stride
    affine[:, 1, 1] -= stride
    bary_planes = np.concatenate([l1_plane, l2_plane], axis=1).astype(np.float32)
    affine_planes = affine.reshape(-1, 6).astype(np.float32)

    disp = np.zeros((grid_h, grid_w, 2), np.float32)
    counts = extent[:, 0] * extent[:, 1]
    total = int(counts.sum())
    if total:
        tri = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        local = np.arange(total, dtype=np.int32) - np.repeat(
            (np.cumsum(counts) - counts).astype(np.int32), counts
        )
        # np.take on contiguous tables: faster than fancy indexing for these gathers.
        ew = np.take(extent[:, 0].astype(np.int32), tri)
        gy_local = local // ew
        gx = np.take(lo[:, 0].astype(np.int32), tri) + (local - gy_local * ew)
        gy = np.take(lo[:, 1].astype(np.int32), tri) + gy_local
        # The inside test needs only the barycentric planes; the affine ones are gathered
        # for the covered points alone (about half the candidates).
        bary = np.take(bary_planes, tri, axis=0)
        fx, fy = gx.astype(np.float32), gy.astype(np.float32)
        l1 = bary[:, 0] * fx + bary[:, 1] * fy + bary[:, 2]
        l2 = bary[:, 3] * fx + bary[:, 4] * fy + bary[:, 5]
        eps = -1e-4
        inside = np.flatnonzero((l1 >= eps) & (l2 >= eps) & (l1 + l2 <= 1.0 - eps))
        coef = np.take(affine_planes, np.take(tri, inside), axis=0)
        fx, fy = np.take(fx, inside), np.take(fy, inside)
        cell = np.take(gy, inside) * grid_w + np.take(gx, inside)
        cells = disp.reshape(-1, 2)
        cells[cell, 0] = coef[:, 0] * fx + coef[:, 1] * fy + coef[:, 2]
        cells[cell, 1] = coef[:, 3] * fx + coef[:, 4] * fy + coef[:, 5]

    if stride > 1:
        disp = cv2.resize(disp, (grid_w * stride, grid_h * stride), interpolation=cv2.INTER_LINEAR)
    skip = pad * stride
    disp = disp[skip : skip + height, skip : skip + width]
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)
    map_x = disp[..., 0] + xs[None, :]
    map_y = disp[..., 1] + ys[:, None]
    return map_x, map_y


def corner_bounds(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each triangle's (T, 2) lowest and highest x and y over its (T, 3, 2) corners, element-wise
    over the three: several times faster than ``min``/``max`` along an axis of length 3."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    return np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c)


def warp_region(
    source_image: np.ndarray,
    dest: np.ndarray,
    source: np.ndarray,
    triangles: np.ndarray,
    roi: tuple[int, int, int, int],
    stride: int,
) -> np.ndarray:
    """The ``roi`` of the destination image, sampled from ``source_image``."""
    map_x, map_y = rasterise_map(dest, source, triangles, roi, stride)
    return cv2.remap(source_image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def bounding_roi(points: np.ndarray, shape: tuple[int, ...], margin: int = 2) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) around ``points``, clipped to an image of ``shape``."""
    height, width = shape[:2]
    x0 = int(np.clip(np.floor(points[:, 0].min()) - margin, 0, width))
    y0 = int(np.clip(np.floor(points[:, 1].min()) - margin, 0, height))
    x1 = int(np.clip(np.ceil(points[:, 0].max()) + margin + 1, 0, width))
    y1 = int(np.clip(np.ceil(points[:, 1].max()) + margin + 1, 0, height))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
