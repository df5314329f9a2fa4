"""Tried, not shipped (benchmarks/RESULTS.md, session 23): each iris drawn as its own layer.

The warp fills each eye with a fan from the lid loop to the iris centre, so a pixel moves by the
centre's displacement times its nearness to the centre and a glance comes out a quarter to a half
of its size. Here, once per avatar, each iris is cut out of the image the warp samples (the hole
filled from the eye's pale pixels around it) and pasted back each frame moved, turned and scaled
with its eye, cut by the target's lid opening. This script runs any ``realtime`` command with the warp
so changed, for before/after measurements:

    python benchmarks/iris_layer.py eval --max-frames 150 --generator warp --data CLIP...
    python benchmarks/iris_layer.py render --avatar IMAGE --driver CLIP --out OUT.mp4

What it still gets wrong: the cut against the lids is hard (a feathered one cost the blinks), a
large iris leaves slivers on the lid line, and the fill shows as a bright patch where an iris
leaves a shaded corner (paintings, the cartoon).
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from realtime import mesh

EYES = (
    (mesh.RIGHT_EYE, mesh.RIGHT_IRIS, mesh.RIGHT_EYE_OUTER, mesh.RIGHT_EYE_INNER),
    (mesh.LEFT_EYE, mesh.LEFT_IRIS, mesh.LEFT_EYE_OUTER, mesh.LEFT_EYE_INNER),
)
IRIS_MARGIN = 1.15  # the layer reaches this many iris radii: the limbus's dark ring and a feather
MIN_RADIUS_PX = 2.0  # an iris smaller than this in the avatar stays in the warp
MAX_GROW = 1.6  # a drawn iris is taken to reach at most this many of mediapipe's iris radii


def _eye_mask(shape: tuple[int, int], loop_points: np.ndarray, offset: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(loop_points - offset).astype(np.int32)], 255)
    return mask


def _similarity(points: np.ndarray, outer: int, inner: int) -> tuple[float, float]:
    """The eye's corner line: length and angle."""
    along = points[inner, :2] - points[outer, :2]
    return float(np.linalg.norm(along)) + 1e-9, float(np.arctan2(along[1], along[0]))


def _whole_iris(
    texture: np.ndarray, visible: np.ndarray, centre: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``texture`` with the iris's parts hidden under the lids (within ``radius``) filled
    in, each from its mirror image across the iris's horizontal midline where that is seen, so
    that a lid higher in the target than in the avatar uncovers iris rather than the lid's cut
    edge; and the bool mask of the iris so completed."""
    out = texture.astype(np.float32)
    height, width = visible.shape
    rows = np.arange(height)
    mirrored = np.clip(np.round(2.0 * centre[1] - rows).astype(int), 0, height - 1)
    seen = visible > 0
    ys, xs = np.mgrid[0:height, 0:width]
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2  # the iris, not the white below it
    hidden = ~seen & seen[mirrored] & inside
    out[hidden] = out[mirrored][hidden]
    return out, seen | hidden


def _drawn_radius(image: np.ndarray, loop_points: np.ndarray, centre: np.ndarray, radius: float) -> float:
    """The iris's radius as drawn: mediapipe's, or larger where a painted or cartoon iris reaches
    further (the first ring, in steps of a tenth, whose visible part is mostly as bright as the
    eye's white)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    opening = _eye_mask(grey.shape, loop_points, np.zeros(2))
    inside = grey[opening > 0]
    if inside.size < 8:
        return radius
    white = float(np.percentile(inside, 90))
    angles = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    for grow in np.arange(1.0, MAX_GROW + 1e-6, 0.1):
        ring = centre + grow * radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        xs, ys = np.round(ring).astype(int).T
        ok = (xs >= 0) & (ys >= 0) & (xs < grey.shape[1]) & (ys < grey.shape[0])
        xs, ys = xs[ok], ys[ok]
        seen = opening[ys, xs] > 0
        if seen.sum() >= 6 and np.median(grey[ys[seen], xs[seen]]) >= 0.8 * white:
            return grow * radius
    return MAX_GROW * radius


class IrisLayers:
    """The avatar's irises, cut out once; ``source`` is the avatar image without them."""

    def __init__(self, image: np.ndarray, points: np.ndarray) -> None:
        self.source = image
        self._eyes = []
        if len(points) <= max(mesh.LEFT_IRIS):
            return
        without = image.copy()
        for loop, iris, outer, inner in EYES:
            centre = points[iris[0], :2].astype(np.float64)
            radius = float(np.linalg.norm(points[iris[1:], :2] - centre, axis=1).mean())
            if radius < MIN_RADIUS_PX:
                continue
            radius = _drawn_radius(image, points[loop, :2], centre, radius)
            reach = int(np.ceil(IRIS_MARGIN * radius)) + 2
            x0, y0 = int(np.floor(centre[0])) - reach, int(np.floor(centre[1])) - reach
            x1, y1 = x0 + 2 * reach + 1, y0 + 2 * reach + 1
            if x0 < 0 or y0 < 0 or x1 > image.shape[1] or y1 > image.shape[0]:
                continue
            origin = np.array([x0, y0], np.float64)
            opening = _eye_mask((y1 - y0, x1 - x0), points[loop, :2], origin)
            disc = np.zeros_like(opening)
            cv2.circle(
                disc, tuple(np.round(centre - origin).astype(int)), int(round(IRIS_MARGIN * radius)), 255, -1
            )
            visible = cv2.bitwise_and(disc, opening)
            if not visible.any():
                continue
            texture, whole = _whole_iris(image[y0:y1, x0:x1], visible, centre - origin, radius)
            # The white where the iris was, kept clear of the opening's edge (mediapipe's lid line
            # runs on the lids' dark rim, which stays): the eye's white around it, lashes and the
            # lids' shadow left out, spread smoothly over it.
            rim = max(1, int(round(0.1 * radius)))
            clear = cv2.erode(opening, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8)) > 0
            hole = (cv2.dilate(visible, np.ones((3, 3), np.uint8)) > 0) & clear
            region = without[y0:y1, x0:x1]
            around = (opening > 0) & ~hole
            if around.sum() >= 8:
                grey = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY)
                saturation = cv2.cvtColor(region, cv2.COLOR_BGR2HSV)[..., 1]
                white = (
                    around
                    & (grey >= 0.6 * np.percentile(grey[around], 90))
                    & (saturation <= np.percentile(saturation[around], 50))
                ).astype(np.float32)
                spread = max(1.0, radius * 0.35)
                colour = cv2.GaussianBlur(region.astype(np.float32) * white[..., None], (0, 0), spread)
                weight = cv2.GaussianBlur(white, (0, 0), spread)[..., None]
                # Far from any white, its median: the blur's weight fades into it.
                median = np.median(region[white > 0].reshape(-1, 3).astype(np.float32), axis=0)
                region[hole] = ((colour + 0.05 * median) / (weight + 0.05))[hole].astype(np.uint8)
            else:
                region[:] = cv2.inpaint(region, hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
            # The layer: all the white took, and the iris's hidden parts, feathered outwards (so an
            # unmoved eye is drawn exactly as the avatar's).
            layer = (hole | whole).astype(np.float32)
            alpha = np.maximum(layer, cv2.GaussianBlur(layer, (0, 0), max(0.6, 0.1 * radius)))
            length, angle = _similarity(points, outer, inner)
            self._eyes.append((loop, iris[0], outer, inner, texture, alpha, centre - origin, length, angle))
        self.source = without

    def paste(self, patch: np.ndarray, origin: tuple[int, int], dest: np.ndarray) -> None:
        """Paste each iris into ``patch`` (whose pixel (0, 0) is image pixel ``origin``) at the target
        landmarks ``dest``, inside their lid openings."""
        for loop, iris, outer, inner, texture, alpha, centre, length, angle in self._eyes:
            dest_length, dest_angle = _similarity(dest, outer, inner)
            zoom = dest_length / length
            turn = np.degrees(dest_angle - angle)
            matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -turn, zoom)
            target = dest[iris, :2] - np.asarray(origin, np.float64)
            matrix[:, 2] += target - centre
            box = _box(dest[loop, :2] - np.asarray(origin, np.float64), patch.shape)
            if box is None:
                continue
            bx0, by0, bx1, by1 = box
            matrix[:, 2] -= (bx0, by0)
            size = (bx1 - bx0, by1 - by0)
            moved = cv2.warpAffine(
                texture, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            opening = _eye_mask(
                (size[1], size[0]), dest[loop, :2], np.asarray(origin, np.float64) + (bx0, by0)
            )
            weight *= opening > 0  # under the lids; their rims are dark, so a hard cut does not show
            region = patch[by0:by1, bx0:bx1].astype(np.float32)
            patch[by0:by1, bx0:bx1] = (region + (moved - region) * weight[..., None]).astype(np.uint8)


def _box(points: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(points.max(axis=0)).astype(int) + 3, (shape[1], shape[0]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _patched_warp() -> None:
    """WarpGenerator with iris layers: the warp samples the avatar without its irises, and each
    render pastes them back at the target's."""
    from realtime.frames import Mode
    from realtime.generators.warp import WarpGenerator

    init, reenact, swap = WarpGenerator.__init__, WarpGenerator._render_reenact, WarpGenerator._render_swap

    def __init__(self, avatar_image, avatar_landmarks, mode=Mode.REENACT):
        init(self, avatar_image, avatar_landmarks, mode)
        if self.mode is Mode.REENACT:
            self._irises = IrisLayers(self.avatar_image, self.avatar_points)
            self.avatar_image = self._irises.source  # the face's pixels all come from the patch
        else:
            image, points = self._levels[0]
            self._irises = IrisLayers(image, points)
            self._levels = [(self._irises.source, points)]
            while mesh.face_size(self._levels[-1][1]) > 48 and min(self._levels[-1][0].shape[:2]) > 32:
                smaller, at = self._levels[-1]
                self._levels.append((cv2.pyrDown(smaller), (at + 0.5) / 2.0 - 0.5))

    def with_irises(render):
        def rendered(self, target, dest):
            out = render(self, target, dest)
            self._irises.paste(out.patch, out.origin, dest)
            return out

        return rendered

    WarpGenerator.__init__ = __init__
    WarpGenerator._render_reenact = with_irises(reenact)
    WarpGenerator._render_swap = with_irises(swap)


if __name__ == "__main__":
    _patched_warp()
    from realtime.cli import main

    sys.exit(main(sys.argv[1:]))
