"""The avatar's irises as layers of their own, so that a glance comes through at its full size.

The warp fills each eye with a fan from the lid loop to the iris centre: a pixel moves by the
centre's displacement times its nearness to the centre, so the iris's edge moves half as far as
its centre. Here each iris is cut out of the image the warp samples, once per avatar (the hole
filled with the eye's white, row by row from either side of it), and pasted back every frame
moved, turned and scaled with its eye, cut by the target's lid opening. An unmoved eye comes out
as the avatar's own. Where the eye is drawn well past mediapipe's lid loop (a cartoon's large
eyes), the loop grown to the drawn lids cuts it instead, or the iris's rim would stay behind.

An eye is left to the fan where the iris cannot be cut cleanly: too small, at the image's edge,
or with a dark line just outside its lids that may be drawn lids or a glasses' rim.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realtime import mesh
from realtime.generators.piecewise import bounding_roi

EYES = (
    (mesh.RIGHT_EYE, mesh.RIGHT_IRIS, mesh.RIGHT_EYE_OUTER, mesh.RIGHT_EYE_INNER),
    (mesh.LEFT_EYE, mesh.LEFT_IRIS, mesh.LEFT_EYE_OUTER, mesh.LEFT_EYE_INNER),
)
IRIS_MARGIN = 1.15  # the layer reaches this many iris radii: the limbus's dark ring and a feather
MIN_RADIUS_PX = 2.0  # an iris smaller than this in the avatar stays in the fan
MAX_GROW = 1.6  # a drawn iris is taken to reach at most this many of mediapipe's iris radii
LID_SEARCH = np.arange(1.0, 1.61, 0.05)  # lid loops grown this much (vertically) looking for the drawn lids
GROWN_LIDS_MIN = 1.3  # drawn lids this far outside the loop are taken as the eye's (a cartoon's)


def _eye_mask(shape: tuple[int, int], loop_points: np.ndarray, offset: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(loop_points - offset).astype(np.int32)], 255)
    return mask


def _corner_line(points: np.ndarray, outer: int, inner: int) -> tuple[float, float]:
    """The eye's corner line: length and angle."""
    along = points[inner, :2] - points[outer, :2]
    return float(np.linalg.norm(along)) + 1e-9, float(np.arctan2(along[1], along[0]))


def _drawn_radius(grey: np.ndarray, opening: np.ndarray, centre: np.ndarray, radius: float) -> float:
    """The iris's radius as drawn: mediapipe's, or larger where a painted iris reaches further
    (the first ring, in steps of a tenth, whose visible part is mostly as bright as the white)."""
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


def _whole_iris(
    texture: np.ndarray, visible: np.ndarray, centre: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``texture`` with the iris's parts hidden under the lids filled in from their mirror
    image across its horizontal midline (so a lid higher in the target than in the avatar uncovers
    iris, not the lid's cut edge), and the bool mask of the iris so completed."""
    out = texture.astype(np.float32)
    height, width = visible.shape
    mirrored = np.clip(np.round(2.0 * centre[1] - np.arange(height)).astype(int), 0, height - 1)
    seen = visible > 0
    ys, xs = np.mgrid[0:height, 0:width]
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2
    hidden = ~seen & seen[mirrored] & inside
    out[hidden] = out[mirrored][hidden]
    return out, seen | hidden


def _white_rows(region: np.ndarray, clear: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """float32 ``region`` with ``hole`` filled by the eye's white: each row interpolated between
    the white just left and right of the hole (so the white keeps its shading towards the
    corners and under the upper lid), a row with white on neither side taking the nearest row's."""
    out = region.astype(np.float32)
    white = clear & ~hole
    rows = np.flatnonzero(hole.any(axis=1))
    filled: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for y in rows:
        xs = np.flatnonzero(hole[y])
        left = np.flatnonzero(white[y, : xs[0]])[-2:]
        right = xs[-1] + 1 + np.flatnonzero(white[y, xs[-1] + 1 :])[:2]
        if left.size == 0 and right.size == 0:
            continue
        a = out[y, left].mean(axis=0) if left.size else out[y, right].mean(axis=0)
        b = out[y, right].mean(axis=0) if right.size else a
        filled[int(y)] = (xs, a, b)
    if not filled:
        return out
    known = np.array(sorted(filled))
    for y in rows:
        xs = np.flatnonzero(hole[y])
        nearest = int(known[np.argmin(np.abs(known - y))])
        _, a, b = filled[nearest]
        t = (xs - xs[0] + 0.5) / (xs[-1] - xs[0] + 1.0)
        out[y, xs] = a + (b - a) * t[:, None]
    # Rows filled apart: a little vertical smoothing inside the hole, so they do not streak.
    smooth = cv2.GaussianBlur(out, (1, 5), 0, sigmaY=1.0)
    out[hole] = smooth[hole]
    return out


def _grown(loop_points: np.ndarray, grow: float) -> np.ndarray:
    """The lid loop grown about its middle: ``grow`` times up and down, half as much across."""
    centre = loop_points.mean(axis=0)
    return centre + (loop_points - centre) * np.array([1.0 + 0.5 * (grow - 1.0), grow])


def _along(loop_points: np.ndarray, per_side: int = 6) -> np.ndarray:
    """Points along the closed loop, ``per_side`` per side."""
    steps = np.linspace(0.0, 1.0, per_side, endpoint=False)[:, None]
    sides = np.roll(loop_points, -1, axis=0) - loop_points
    return (loop_points[:, None] + steps * sides[:, None]).reshape(-1, 2)


def _drawn_lids(grey: np.ndarray, loop_points: np.ndarray) -> float:
    """How far the eye's drawn lids lie outside mediapipe's lid loop, as ``_grown``'s factor: 1
    where they are on it (photos, paintings); more where a cartoon's large eyes are drawn past it
    (the darkest line around the eye is the loop grown by 15-55 %, clearly darker than the loop
    itself, with lighter skin beyond it). Cut by mediapipe's loop, such an iris would leave its
    rim on the lids."""
    rings = np.stack([_along(_grown(loop_points, grow)) for grow in LID_SEARCH]).astype(np.float32)
    sampled = cv2.remap(
        grey, np.ascontiguousarray(rings[..., 0]), np.ascontiguousarray(rings[..., 1]), cv2.INTER_LINEAR
    )
    values = sampled.astype(np.float64).mean(axis=1)
    darkest = int(np.argmin(values))
    drawn_outside = (
        LID_SEARCH[darkest] >= 1.15
        and values[darkest] <= 0.85 * values[0]
        and darkest + 1 < len(values)
        and values[darkest + 1 :].max() >= 1.05 * values[darkest]
    )
    return float(LID_SEARCH[darkest]) if drawn_outside else 1.0


@dataclass
class _Layer:
    """One eye's iris, cut out: where it goes (landmark indices) and what is pasted."""

    loop: list[int]
    iris: int
    outer: int
    inner: int
    texture: np.ndarray  # float32, the iris and the white around it
    alpha: np.ndarray  # float32 weights of ``texture``
    centre: np.ndarray  # the iris centre in ``texture``
    grow: float  # how far the drawn lids lie outside the loop (``_drawn_lids``)
    length: float  # the avatar's eye corner line, which ``texture`` is drawn for
    angle: float

    def mirrored(self, loop: list[int], iris: int, outer: int, inner: int) -> _Layer:
        """This iris, mirrored, for the other eye."""
        width = self.texture.shape[1]
        return _Layer(
            loop,
            iris,
            outer,
            inner,
            self.texture[:, ::-1],
            self.alpha[:, ::-1],
            np.array([width - 1 - self.centre[0], self.centre[1]]),
            self.grow,
            self.length,
            np.pi - self.angle,
        )


class IrisLayers:
    """The avatar's irises, cut out once; ``source`` is the avatar image without them."""

    def __init__(self, image: np.ndarray, points: np.ndarray, mirrored: np.ndarray | None = None) -> None:
        """``mirrored``: (479,) bool, the half of the face the warp draws from the other half,
        mirrored (``frontal.mirrored_half``); its eye's iris is the other eye's, mirrored too."""
        self.source = image
        self._layers: list[_Layer] = []
        if len(points) <= max(mesh.LEFT_IRIS):
            return
        without = image.copy()
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        grows = [_drawn_lids(grey, points[loop, :2].astype(np.float64)) for loop, _, _, _ in EYES]
        # One eye's lids drawn clearly outside the loop make the other's fainter line believable.
        drawn = max(grows) >= GROWN_LIDS_MIN
        cut: dict[int, _Layer] = {}
        for (loop, iris, outer, inner), grow in zip(EYES, grows, strict=True):
            if (mirrored is not None and mirrored[loop].any()) or (1.0 < grow < GROWN_LIDS_MIN and not drawn):
                continue  # a dark line just outside the lids: drawn lids, or glasses' rim or a brow
            eye = self._cut(image, grey, without, points, loop, iris[0], iris[1:], grow)
            if eye is not None:
                cut[iris[0]] = _Layer(loop, iris[0], outer, inner, *eye, *_corner_line(points, outer, inner))
        for (loop, iris, outer, inner), (_, other, _, _) in zip(EYES, EYES[::-1], strict=True):
            if iris[0] in cut:
                self._layers.append(cut[iris[0]])
            elif other[0] in cut and mirrored is not None and mirrored[loop].any():
                self._layers.append(cut[other[0]].mirrored(loop, iris[0], outer, inner))
        self.source = without

    @property
    def eyes(self) -> int:
        """How many irises are drawn as layers (the others stay in the warp's fan)."""
        return len(self._layers)

    @staticmethod
    def _cut(
        image: np.ndarray,
        grey: np.ndarray,
        without: np.ndarray,
        points: np.ndarray,
        loop: list[int],
        centre_index: int,
        ring: list[int],
        grow: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """Cut one iris out of ``without`` (filled with the white), its lids the loop grown by
        ``grow`` (``_drawn_lids``); its texture, alpha, centre in the texture and ``grow``, or None
        where it stays in the fan."""
        centre = points[centre_index, :2].astype(np.float64)
        radius = float(np.linalg.norm(points[ring, :2] - centre, axis=1).mean())
        if radius < MIN_RADIUS_PX:
            return None
        lids = _grown(points[loop, :2].astype(np.float64), grow)
        reach = int(np.ceil(max(IRIS_MARGIN * MAX_GROW * radius, np.abs(lids - centre).max()))) + 4
        x0, y0 = int(np.floor(centre[0])) - reach, int(np.floor(centre[1])) - reach
        x1, y1 = x0 + 2 * reach + 1, y0 + 2 * reach + 1
        if x0 < 0 or y0 < 0 or x1 > image.shape[1] or y1 > image.shape[0]:
            return None
        origin = np.array([x0, y0], np.float64)
        local = centre - origin
        opening = _eye_mask((y1 - y0, x1 - x0), lids, origin)
        radius = _drawn_radius(grey[y0:y1, x0:x1], opening, local, radius)
        disc = np.zeros_like(opening)
        cv2.circle(disc, tuple(np.round(local).astype(int)), int(round(IRIS_MARGIN * radius)), 255, -1)
        visible = cv2.bitwise_and(disc, opening)
        if not visible.any():
            return None
        texture, whole = _whole_iris(image[y0:y1, x0:x1], visible, local, radius)
        # The hole stays a tenth of a radius clear of the loop: mediapipe's lid line runs on the
        # lids' dark rim, which must stay (the blink judge, and the eye, read the lids by it).
        rim = max(1, int(round(0.1 * radius)))
        clear = cv2.erode(opening, np.ones((2 * rim + 1, 2 * rim + 1), np.uint8)) > 0
        hole = (cv2.dilate(visible, np.ones((3, 3), np.uint8)) > 0) & clear
        region = without[y0:y1, x0:x1]
        region[hole] = np.clip(_white_rows(region, clear, hole)[hole] + 0.5, 0, 255).astype(np.uint8)
        # The layer covers all the white took and the iris's hidden parts, feathered outwards,
        # so an unmoved eye is drawn exactly as the avatar's.
        layer = (hole | whole).astype(np.float32)
        alpha = np.maximum(layer, cv2.GaussianBlur(layer, (0, 0), max(0.6, 0.1 * radius)))
        return texture, alpha, local, grow

    def paste(self, patch: np.ndarray, origin: tuple[int, int], dest: np.ndarray) -> None:
        """Paste each iris into ``patch`` (whose pixel (0, 0) is image pixel ``origin``) at the
        target landmarks ``dest``, inside their lid openings."""
        offset = np.asarray(origin, np.float64)
        for layer in self._layers:
            lids = _grown(dest[layer.loop, :2].astype(np.float64), layer.grow) - offset
            bx0, by0, bx1, by1 = bounding_roi(lids, patch.shape, margin=2)
            if bx1 - bx0 < 2 or by1 - by0 < 2:
                continue
            dest_length, dest_angle = _corner_line(dest, layer.outer, layer.inner)
            matrix = cv2.getRotationMatrix2D(
                (float(layer.centre[0]), float(layer.centre[1])),
                -np.degrees(dest_angle - layer.angle),
                dest_length / layer.length,
            )
            matrix[:, 2] += dest[layer.iris, :2] - offset - layer.centre - (bx0, by0)
            size = (bx1 - bx0, by1 - by0)
            moved = cv2.warpAffine(
                layer.texture, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            weight = cv2.warpAffine(layer.alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            # Cut hard by the lids: their rims are dark, and blinks are read by that line.
            weight *= _eye_mask((size[1], size[0]), lids, np.array([bx0, by0], np.float64)) > 0
            region = patch[by0:by1, bx0:bx1].astype(np.float32)
            patch[by0:by1, bx0:bx1] = (region + (moved - region) * weight[..., None]).astype(np.uint8)
