"""The user's glasses in swap mode: found, so that their frame can stay in front of the swapped
face (``--keep-glasses``), or stay out of the eyelids a blink shows the user's own.

A swap that draws the avatar's eyes over the user's glasses erases the frame, and the frame
flashed back whenever the user's own eyes showed through (a blink). Found on the user's image,
on a small grid around the eyes:

- dark thin lines: a morphological black-hat (a closing minus the image) picks out what is
  darker than its surroundings and narrower than RIM_WIDTH; the eyes, lashes and brows are
  left out;
- rims: lines that run a long way round an eye (RIM_SPAN degrees, at 0.1-0.4 face sizes from
  its centre); a lid crease, make-up or a shadow under the eye runs a short arc;
- worn or not: the smaller of the two eyes' longest rim arcs, over the last frames, must
  stay above WORN_SPAN to switch on, and below OFF_SPAN for OFF_FRAMES looks to switch off:
  a face without glasses never gets stray lines, and glasses seen once are not dropped while
  a turn or the light hides their rims for a moment;
- the frame is remembered in the face's own coordinates (the eyes level and centred, at a fixed
  scale: glasses sit still against the face), so a line that only shows faintly in this frame
  still counts where the frame was before.

Thin, light metal frames (little darker than the skin) are not found.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from realtime import mesh

GRID = 160.0  # px per face size at most: a rim is a few pixels wide there
RIM_WIDTH = 0.045  # face sizes: lines narrower than this are looked for
RIM_DARKER = 12.0  # grey levels darker than the closing of the image around them
RIM_REACH = (0.1, 0.4)  # face sizes from an eye's centre where its rim runs
RIM_SPAN = 90  # degrees round an eye: a line this long is part of a frame once glasses are worn
WORN_SPAN, OFF_SPAN = 200, 150  # degrees: the median span over recent frames switches on / off
OFF_FRAMES = 90  # looks below OFF_SPAN in a row before glasses count as taken off
MASK_EVERY = 2  # with a mask wanted frame after frame, it is found on every this many
CHECK_EVERY = 3  # with no mask wanted, whether glasses are worn is looked at every this many frames
MEMORY = 0.8  # per frame, the remembered frame keeps this much of itself
BRIDGE_REACH = 0.12  # face sizes round the midpoint of the inner eye corners: the frame's bridge
BIN_DEGREES = 15
TOP_OUT = 60.0  # degrees either side of straight up from an eye are not counted in a rim's span
# Each brow as a loop (upper edge, then lower edge back): left out with the eyes.
BROW_LOOPS = ([70, 63, 105, 66, 107, 55, 65, 52, 53, 46], [300, 293, 334, 296, 336, 285, 295, 282, 283, 276])
EYE_MARGIN, BROW_MARGIN = 0.05, 0.04  # face sizes round the eyes (lashes) and brows, also left out
FACE_GRID, FACE_SCALE = (176, 96), 100.0  # the remembered frame's grid (w, h) and its px per face size


class GlassesFinder:
    """``find(image, landmarks) -> (float32 mask, (x, y)) or None``: the user's glasses frame over
    a box round the eyes in ``image`` (the mask's top left corner at x, y), or None while no
    glasses are worn. Remembers recent frames; one per stream."""

    def __init__(self, history: int = 9) -> None:
        self._spans: deque[float] = deque(maxlen=history)
        self.reset()

    def reset(self) -> None:
        # a full history of nothing: switching on takes more than half of it
        self._spans.extend([0.0] * (self._spans.maxlen or 1))
        self._low_frames = 0
        self._calls = 0
        self._memory: np.ndarray | None = None  # the frame in face coordinates, 0-1
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # mask, its corner, eyes
        self.worn = False

    def find(
        self, image: np.ndarray, landmarks: np.ndarray, mask: bool = True
    ) -> tuple[np.ndarray, tuple[int, int]] | None:
        """``mask`` False: only whether glasses are worn is kept up to date (every CHECK_EVERY-th
        call; it changes slowly), and None comes back. Wanted on consecutive calls, the mask is
        found on every MASK_EVERY-th and moved with the eyes in between (a frame moves with the
        head, a thirtieth of a second turns it little)."""
        self._calls += 1
        if not mask:
            self._last = None
            if self._calls % CHECK_EVERY:
                return None
        points = landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64)
        centre = points[mesh.RIGHT_EYE + mesh.LEFT_EYE].mean(axis=0)
        if mask and self._last is not None and self._calls % MASK_EVERY:
            rims, corner, eyes = self._last
            self._last = None  # moved once, then found afresh
            x, y = np.round(corner + centre - eyes).astype(int)
            rims = rims[max(0, -y) :, max(0, -x) :]  # the part still inside the image
            return (rims, (max(0, int(x)), max(0, int(y)))) if rims.size else None
        size = mesh.face_size(points)
        h, w = image.shape[:2]
        half = np.array([0.85, 0.5]) * size
        x0, y0 = np.maximum(0, np.floor(centre - half).astype(int))
        x1, y1 = np.minimum((w, h), np.ceil(centre + half).astype(int))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale = min(1.0, GRID / size)
        grey = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)  # one channel to resample
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rims = self._rims(grey, (points - (x0, y0)) * scale, size * scale, mask)
        if rims is None:
            self._last = None  # taken off: nothing left to move into the next frame
            return None
        rims = cv2.resize(rims, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        self._last = (rims, np.array([x0, y0], np.float64), centre)
        return rims, (int(x0), int(y0))

    def _rims(self, grey: np.ndarray, points: np.ndarray, size: float, mask: bool) -> np.ndarray | None:
        """The frame's lines (float32 over ``grey``, the eyes' box on the small grid), or None
        while glasses are not worn (or no ``mask`` is wanted)."""
        width = 2 * max(1, int(round(RIM_WIDTH * size))) + 1
        # a square kernel on uint8: separable, several times faster than a disc in float
        darker = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, np.ones((width, width), np.uint8))
        left_out = np.zeros(grey.shape, np.uint8)
        for loop, margin in [(mesh.RIGHT_EYE, EYE_MARGIN), (mesh.LEFT_EYE, EYE_MARGIN)] + [
            (brow, BROW_MARGIN) for brow in BROW_LOOPS
        ]:
            outline = [np.round(points[loop]).astype(np.int32)]
            cv2.fillPoly(left_out, outline, 255)
            cv2.polylines(left_out, outline, True, 255, max(1, int(round(2 * margin * size))))
        lines = ((darker > RIM_DARKER) & (left_out == 0)).astype(np.uint8)
        count, labels = cv2.connectedComponents(lines, connectivity=8)
        ys, xs = np.nonzero(lines)
        spans = self._spans_round_eyes(labels, count, xs, ys, points, size)
        self._update_worn(float(min(spans[0].max(), spans[1].max())))
        if not self.worn:
            self._memory = None
        if not self.worn or not mask:
            return None
        to_face = self._to_face(points, size)
        shape = grey.shape[::-1]
        remembered = None
        if self._memory is not None:
            back = cv2.invertAffineTransform(to_face)
            remembered = cv2.warpAffine(self._memory, back, shape, flags=cv2.INTER_LINEAR) > 0.5
        frame = spans.max(axis=0) >= RIM_SPAN
        bridge = points[mesh.RIGHT_EYE_INNER] / 2 + points[mesh.LEFT_EYE_INNER] / 2
        near_bridge = np.hypot(xs - bridge[0], ys - bridge[1]) < BRIDGE_REACH * size
        frame[np.unique(labels[ys[near_bridge], xs[near_bridge]])] = True
        if remembered is not None:
            # a faint piece of line counts where the frame was
            on_frame = remembered[ys, xs]
            frame[np.unique(labels[ys[on_frame], xs[on_frame]])] = True
        frame[0] = False
        now = frame[labels].astype(np.float32)
        seen = cv2.warpAffine(now, to_face, FACE_GRID, flags=cv2.INTER_LINEAR)
        self._memory = seen if self._memory is None else MEMORY * self._memory + (1.0 - MEMORY) * seen
        rims = (now * 255).astype(np.uint8)
        # a pixel wider and softened: the rim's own anti-aliased edge is frame too
        rims = cv2.dilate(rims, np.ones((3, 3), np.uint8))
        return cv2.GaussianBlur(rims, (3, 3), 0).astype(np.float32) * np.float32(1.0 / 255.0)

    @staticmethod
    def _spans_round_eyes(
        labels: np.ndarray, count: int, xs: np.ndarray, ys: np.ndarray, points: np.ndarray, size: float
    ) -> np.ndarray:
        """(2, count) int: for each eye and each line, the degrees of arc it runs round that eye."""
        spans = np.zeros((2, count), np.int32)
        bins = 360 // BIN_DEGREES
        for side, eye in enumerate((mesh.RIGHT_EYE, mesh.LEFT_EYE)):
            dx, dy = xs - points[eye, 0].mean(), ys - points[eye, 1].mean()
            reach = np.hypot(dx, dy) / size
            angle = np.degrees(np.arctan2(dy, dx))  # image y down: -90 is straight above the eye
            # the brow's side is left out: lids, lashes and make-up run along the top
            near = (reach > RIM_REACH[0]) & (reach < RIM_REACH[1]) & (np.abs(angle + 90.0) > TOP_OUT)
            angle_bin = ((angle[near] + 180.0) // BIN_DEGREES).astype(int) % bins
            hits = np.bincount(labels[ys[near], xs[near]] * bins + angle_bin, minlength=count * bins)
            spans[side] = (hits.reshape(count, bins) > 0).sum(axis=1) * BIN_DEGREES
        spans[:, 0] = 0  # the background
        return spans

    def _update_worn(self, span: float) -> None:
        self._spans.append(span)
        if not self.worn:
            self.worn = float(np.median(self._spans)) >= WORN_SPAN
            self._low_frames = 0
            return
        self._low_frames = self._low_frames + 1 if span < OFF_SPAN else 0
        if self._low_frames >= OFF_FRAMES:
            self.worn = False

    @staticmethod
    def _to_face(points: np.ndarray, size: float) -> np.ndarray:
        """2x3 similarity from the eye grid's pixels to the face's own (FACE_GRID, FACE_SCALE px
        per face size, the eyes level and centred)."""
        right, left = points[mesh.RIGHT_EYE].mean(axis=0), points[mesh.LEFT_EYE].mean(axis=0)
        centre, across = (right + left) / 2, (left - right) / np.linalg.norm(left - right)
        rotation = np.stack([across, [-across[1], across[0]]]) * (FACE_SCALE / size)
        return np.hstack([rotation, (np.array(FACE_GRID, np.float64) / 2 - rotation @ centre)[:, None]])
