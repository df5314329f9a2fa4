"""Swap-mode compositing: the avatar's inner face on the user's, relit and blended in the face's box.

Everything here works on the small box around the user's face, never the whole frame:

- the mask is the user's *inner* face (jaw line, cheeks, up to just above the brows) drawn
  from the user's landmarks every frame, so hair, ears, forehead top and neck stay theirs;
- relighting: the avatar keeps its detail, but its low frequencies (shading and colour,
  region by region) are replaced by the user's, measured with a mask-normalised blur at
  low resolution;
- detail: the avatar's finest band is scaled to the user's camera (a small, soft avatar
  photo on a sharp frame is sharpened; a crisp photo on a soft webcam is softened), and
  grain is added where the user's camera is noisier than the avatar can be made;
- the user's own open mouth (teeth, tongue), their eyelids at the bottom of a blink, the frame
  of their glasses and anything covering the face (a hand) are cut out of the mask;
- the seam is a multi-band (Laplacian pyramid) blend, then clipped to the user's jaw line
  so no avatar skin lands outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from realtime import mesh
from realtime.glasses import GlassesFinder

# The jaw line, temple to temple through the chin (a run of mediapipe's face oval).
JAW = [
    162,
    127,
    234,
    93,
    132,
    58,
    172,
    136,
    150,
    149,
    176,
    148,
    152,
    377,
    400,
    378,
    379,
    365,
    397,
    288,
    361,
    323,
    454,
    356,
    389,
]
# The top of the brows, image right to image left (continuing the jaw's loop).
BROWS = [300, 293, 334, 296, 336, 107, 66, 105, 63, 70]
FOREHEAD, CHIN = 10, 152
BROW_LIFT = 0.12  # the mask's top edge sits this many face sizes above the brows
# The shading's local part may darken/brighten this much beyond the regional one.
LOCAL_SHADING = (0.65, 1.5)
COLOUR_SIGMA_FACTOR = 2.5  # colour is matched over regions this many times wider than shading
# Relighting may darken the avatar's detail freely but amplify it only this much (the rest of a
# brighter skin tone is added as an offset).
DETAIL_GAIN = (0.12, 2.2)
DETAIL_EVERY = 4  # the camera's sharpness and grain are re-measured every this many frames
EYE_RIM = 0.15  # around each eye, this many face sizes are left out of the shading (lids, glasses)
TYPICAL = (0.7, 1.35)  # skin this far below / above its surroundings' luma is left out of the shading
# From this many face sizes under the eyes, what stands out from the avatar's skin is its own look
OWN_FEATURES_BELOW_EYES = 0.12
CONTRAST_LIMIT = 1.6  # the relit avatar's texture may be at most this much stronger than the user's
# Hair, headwear or background inside the avatar's swap region is looked for this far (face sizes)
# in from the region's edge, down to its nose, and where it stands out from its skin by this many
# robust sigmas (of brightness, or of colour).
NOT_FACE_BAND = 0.2
NOT_FACE_SIGMAS = 4.0
LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # BT.601 weights of B, G, R
# Round the user's lips, this many face sizes out, a much darker avatar's detail keeps none of its
# own colour: its fuller lips, stretched to the user's lip line and brightened, left a red-orange
# band on the chin. In full where the avatar keeps this much of its detail's colour or less
# (``keep_hue``: 1 / how much brighter it is relit), not at all from the second value.
LIP_COLOUR_BAND = 0.2
LIP_COLOUR_KEEP = (0.5, 0.7)
# The user's own eyes show once theirs are this fraction of their usual opening, fully from the
# second: a blink's bottom is 0.1-0.45 of it, looking down or aside 0.5-0.7, which the warped lids
# draw (shown there too, the user's own eye region made the face theirs: benchmarks/RESULTS.md).
BLINK_SHOWN = (0.5, 0.3)
MEAN_PER_MEDIAN = 1.2  # mean / median of |Laplacian| of Gaussian noise (of a half-normal: 0.80 / 0.67)


def _face_down(points: np.ndarray) -> np.ndarray:
    """The unit vector along the face from forehead to chin."""
    down = points[CHIN] - points[FOREHEAD]
    return down / (np.linalg.norm(down) + 1e-9)


def _depth_down(shape: tuple[int, int], down: np.ndarray) -> np.ndarray:
    """(h, w) float32: each pixel's position along the unit vector ``down``."""
    xs = np.arange(shape[1], dtype=np.float32)[None, :]
    ys = np.arange(shape[0], dtype=np.float32)[:, None]
    return xs * np.float32(down[0]) + ys * np.float32(down[1])  # (h, w) by broadcasting


def inner_face_polygon(landmarks: np.ndarray) -> np.ndarray:
    """(35, 2) loop around brows, eyes, nose, mouth, cheeks and chin, inside the jaw line."""
    points = landmarks[:, :2].astype(np.float64)
    brows = points[BROWS] - _face_down(points) * BROW_LIFT * mesh.face_size(points)
    return np.concatenate([points[JAW], brows])


def not_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """uint8 (h, w) over the avatar ``image``, 255 where its swap region (``inner_face_polygon``)
    shows something other than its face at the region's top and sides: a fringe or a lock of
    hair, a headscarf, background past a turned cheek. Found by colour against the avatar's own
    skin, as blobs that reach the region's edge (a shadow by the nose does not). None when
    there is nothing."""
    points = landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64)
    x0, y0, x1, y1 = _box(inner_face_polygon(points), 4, image.shape[:2])
    found = _not_face_in(image[y0:y1, x0:x1], points - (x0, y0))
    if found is None:
        return None
    whole = np.zeros(image.shape[:2], np.uint8)
    whole[y0:y1, x0:x1] = found
    return whole


def _not_face_in(image: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """``not_face`` over the box of the swap region (``points`` in its pixels)."""
    size = mesh.face_size(points)
    h, w = image.shape[:2]
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, [np.round(inner_face_polygon(points)).astype(np.int32)], 255)
    # The features stand out from the skin by nature: eyes, lips and brows, with a margin.
    features = np.zeros((h, w), np.uint8)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE, mesh.OUTER_LIP):
        cv2.fillPoly(features, [np.round(points[loop]).astype(np.int32)], 255)
    for brow in (BROWS[:5], BROWS[5:]):
        cv2.polylines(
            features, [np.round(points[brow]).astype(np.int32)], False, 255, max(1, round(0.12 * size))
        )
    features = cv2.dilate(features, np.ones((2 * round(0.075 * size) + 1,) * 2, np.uint8))
    skin = cv2.erode(region, np.ones((2 * round(0.125 * size) + 1,) * 2, np.uint8)) & ~features
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    samples = lab[skin > 0]
    if len(samples) < 50:
        return None
    centre = np.median(samples, axis=0)
    # robust sigmas, floored at a few levels: a flat cartoon's skin has almost none
    sigma = 1.4826 * np.median(np.abs(samples - centre), axis=0) + np.float32([3.0, 1.5, 1.5])
    z = np.abs(lab - centre) / sigma
    apart = np.maximum(z[..., 0], np.hypot(z[..., 1], z[..., 2])) > NOT_FACE_SIGMAS
    down = _face_down(points)
    above_nose = _depth_down((h, w), down) < points[mesh.NOSE_BOTTOM] @ down
    from_edge = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    candidate = (
        apart & above_nose & (region > 0) & (from_edge < NOT_FACE_BAND * size) & (features == 0)
    ).astype(np.uint8)
    k = 2 * round(0.03 * size) + 1
    candidate = cv2.morphologyEx(candidate, cv2.MORPH_OPEN, np.ones((k, k), np.uint8))
    count, labels = cv2.connectedComponents(candidate)
    if count < 2:
        return None
    at_edge = np.unique(labels[(candidate > 0) & (from_edge <= max(2.0, 0.03 * size))])
    keep = np.isin(labels, at_edge[at_edge > 0])
    if not keep.any():
        return None
    # grown a little: a lock's soft edge is not skin either
    return cv2.dilate(keep.astype(np.uint8) * 255, np.ones((k, k), np.uint8))


def without_hair(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The avatar ``image`` with ``not_face`` painted over by the skin around it: the local mean
    of the swap region's other pixels (so no hair outside the region bleeds back in). The image
    itself when there is nothing to paint."""
    points = landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64)
    size = mesh.face_size(points)
    x0, y0, x1, y1 = _box(inner_face_polygon(points), 4 + round(0.1 * size), image.shape[:2])
    box = image[y0:y1, x0:x1]
    cover = _not_face_in(box, points - (x0, y0))
    if cover is None:
        return image
    region = np.zeros(box.shape[:2], np.uint8)
    cv2.fillPoly(region, [np.round(inner_face_polygon(points - (x0, y0))).astype(np.int32)], 255)
    known = ((region > 0) & (cover == 0)).astype(np.float32)
    skin = _box_mean(box.astype(np.float32), known, max(2.0, 0.08 * size))
    # all of what was found, fading out beyond it
    k = 2 * round(0.04 * size) + 1
    grown = cv2.dilate(cover, np.ones((k, k), np.uint8))
    share = cv2.GaussianBlur(grown, (k, k), 0).astype(np.float32)[..., None] / 255.0
    painted = image.copy()
    painted[y0:y1, x0:x1] = np.clip(box + (skin - box) * share, 0, 255).astype(np.uint8)
    return painted


@dataclass
class SwapSettings:
    relight_sigma: float = 0.3  # low-pass of the shading transfer, in face sizes
    relight_gain: tuple[float, float] = (0.12, 5.0)  # how far shading may darken / brighten
    detail_gain: tuple[float, float] = (0.5, 2.2)
    grain: bool = True
    mouth_from_user: bool = True  # the user's own open mouth (teeth, tongue) shows through
    # ... cut this many face sizes wider than their inner lips: a thin opening on a small face
    # otherwise vanished under its own feathering and the pyramid's coarse bands
    mouth_grow: float = 0.03
    blinks_from_user: bool = True  # while the user's eyes close, their own eyelids show through
    find_glasses: bool = True  # look for the user's glasses (realtime.glasses) to keep or leave out
    inset: float = 0.05  # the blend's mask is pulled in from the jaw line by this many face sizes
    levels: int = 5  # pyramid levels at most
    smoothing: float = 0.8  # per-frame smoothing of the detail and grain estimates


def _channels(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``mask`` (h, w) repeated to ``like``'s channels: numpy broadcasting over a trailing axis of 3
    runs an inner loop of 3 and is about ten times slower than a same-shape operation."""
    if like.ndim == 2:
        return mask
    return cv2.merge([mask] * like.shape[2])


def _area_down(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area resampling to a much smaller ``size`` (w, h): halved by pyrDown first, since area
    resampling by a large non-integer factor is slow (~1 ms for a face box to a 20 px grid)."""
    while image.shape[1] >= 4 * size[0] and image.shape[0] >= 4 * size[1]:
        image = cv2.pyrDown(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _typical(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """1 where the luma is within TYPICAL of its local (mask-normalised, ``sigma``) mean, fading
    to 0 beyond: spots and rims stand out from their surroundings, shading does not."""
    luma = image @ LUMA_BGR
    local = cv2.GaussianBlur(luma * weight, (0, 0), sigma) / np.maximum(
        cv2.GaussianBlur(weight, (0, 0), sigma), 1e-4
    )
    ratio = (luma + 1.0) / (local + 1.0)
    low, high = TYPICAL
    # linear fades over a tenth either side of the bounds
    return np.clip(
        np.minimum((ratio - low * 0.9) / (low * 0.1), (high * 1.1 - ratio) / (high * 0.1)), 0.0, 1.0
    )


def _below_eyes(shape: tuple[int, int], points: np.ndarray, size: float) -> np.ndarray:
    """(h, w) float32: 0 down to OWN_FEATURES_BELOW_EYES face sizes under the eyes' lowest point,
    rising to 1 over a tenth of a face size beyond, along the face's own forehead-to-chin axis."""
    down = _face_down(points)
    start = float((points[mesh.RIGHT_EYE + mesh.LEFT_EYE] @ down).max()) + OWN_FEATURES_BELOW_EYES * size
    depth = _depth_down(shape, down)
    return np.clip((depth - np.float32(start)) / np.float32(0.1 * size), 0.0, 1.0)


def _around_lips(shape: tuple[int, int], points: np.ndarray, size: float, fine: int = 4) -> np.ndarray:
    """(h, w) float32: 1 in a band LIP_COLOUR_BAND face sizes wide outside the user's outer lip
    line, 0 on the lips and beyond the band, feathered; drawn ``fine`` times finer and averaged
    down, since the shading grid has only a few pixels across the band."""
    band = max(1, int(round(LIP_COLOUR_BAND * size * fine)))
    lips = [np.round(points[mesh.OUTER_LIP, :2] * fine * 4).astype(np.int32)]
    mask = np.zeros((shape[0] * fine, shape[1] * fine), np.uint8)
    cv2.polylines(mask, lips, True, 255, 2 * band, cv2.LINE_AA, 2)
    cv2.fillPoly(mask, lips, 0, cv2.LINE_AA, 2)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, band / 4))
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_AREA).astype(
        np.float32
    ) * np.float32(1.0 / 255.0)


def _box_mean(image: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Mask-normalised Gaussian blur: the local mean of ``image`` where ``weight`` > 0."""
    w = cv2.GaussianBlur(weight, (0, 0), sigma)
    num = cv2.GaussianBlur(image * weight[..., None], (0, 0), sigma)
    return num / np.maximum(w, 1e-4)[..., None]


def laplacian_blend(front: np.ndarray, back: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Multi-band blend (Burt & Adelson): each band of ``front`` over ``back`` under the mask
    at that band's scale, so fine detail switches sharply and shading changes gently."""
    return back + blend_difference(front - back, mask, levels)


def blend_difference(diff: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """The multi-band blend of ``diff`` = front − back under ``mask``, to be added to back.

    Bands are linear, so ``m·band(front) + (1-m)·band(back) = band(back) + m·band(front-back)``:
    one pyramid of the difference does the work of two.
    """
    g_diff, g_mask = [diff], [_channels(mask, diff)]
    for _ in range(levels):
        g_diff.append(cv2.pyrDown(g_diff[-1]))
        g_mask.append(cv2.pyrDown(g_mask[-1]))
    out = g_diff[-1] * g_mask[-1]
    for level in range(levels - 1, -1, -1):
        size = (g_diff[level].shape[1], g_diff[level].shape[0])
        band = g_diff[level] - cv2.pyrUp(g_diff[level + 1], dstsize=size)
        band *= g_mask[level]
        out = cv2.pyrUp(out, dstsize=size)
        out += band
    return out


def _box(points: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The points' bounding box grown by ``margin`` px, clipped to ``shape`` (h, w): x0, y0, x1, y1."""
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + margin + 1
    return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)


def _fine_energy(image: np.ndarray, where: np.ndarray, median: bool = False) -> float:
    """Mean (or median) absolute 3x3 Laplacian of the grey image where ``where``: sharpness
    plus noise (the median: mostly noise)."""
    if not where.any():
        return 0.0
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    response = np.abs(cv2.Laplacian(grey, cv2.CV_16S, ksize=1))[where]
    return float(np.median(response[::3])) if median else float(response.mean())


class SwapCompositor:
    """``composite(background, patch, origin, landmarks, occluder) -> image``.

    Keeps a little state between frames (smoothed detail gain and grain) so the camera
    matching does not flicker; one per stream.
    """

    def __init__(self, settings: SwapSettings | None = None, seed: int = 0) -> None:
        self.settings = settings or SwapSettings()
        self._detail_gain: float | None = None
        self._grain: float | None = None
        self._eyes_open: float | None = None
        self._cap: float | None = None
        self._frames = 0
        self._glasses = GlassesFinder()
        self._rng = np.random.default_rng(seed)
        self._noise = _channels(self._rng.standard_normal((512, 512)).astype(np.float32), np.empty((1, 1, 3)))

    def reset(self) -> None:
        self._detail_gain = self._grain = self._eyes_open = self._cap = None
        self._glasses.reset()

    def masks(
        self, shape: tuple[int, int], landmarks: np.ndarray, origin: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(blend mask, jaw-line clip) as float32 over a box of ``shape``."""
        points = landmarks[:, :2].astype(np.float64) - origin
        size = mesh.face_size(points)
        polygon = inner_face_polygon(points)
        clip = np.zeros(shape, np.uint8)
        cv2.fillPoly(clip, [np.round(polygon * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        # The blend's own mask is the polygon pulled in towards its centre, slightly softened;
        # the pyramid widens the transition band by band.
        inset = max(1.0, self.settings.inset * size)
        centre = polygon.mean(axis=0)
        offset = polygon - centre
        reach = np.linalg.norm(offset, axis=1, keepdims=True)
        inner = centre + offset * np.clip(1.0 - inset / np.maximum(reach, 1e-6), 0.0, 1.0)
        blend = np.zeros(shape, np.uint8)
        cv2.fillPoly(blend, [np.round(inner * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        k = 2 * int(inset) + 1
        # In float: OpenCV's uint8 Gaussian with a wide kernel is several times slower.
        blend = cv2.GaussianBlur(blend.astype(np.float32) * (1.0 / 255.0), (k, k), 0)
        return blend, clip.astype(np.float32) * (1.0 / 255.0)

    def skin_weight(self, small: tuple[int, int], landmarks: np.ndarray, scale: float) -> np.ndarray:
        """Skin for the shading estimate, on the small grid: the inner face without the mouth
        (open or not, its darkness is the mouth's, not the light's)."""
        points = landmarks[:, :2].astype(np.float64) * scale
        weight = np.zeros((small[1], small[0]), np.uint8)
        cv2.fillPoly(
            weight, [np.round(inner_face_polygon(points) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4
        )
        lips = [np.round(points[mesh.OUTER_LIP] * 16).astype(np.int32)]
        cv2.fillPoly(weight, lips, 0, cv2.LINE_AA, 4)
        # and a rim around them: lip shadows and lipstick edges are not light either
        rim = max(1, int(round(0.08 * mesh.face_size(points))))
        cv2.polylines(weight, lips, True, 0, rim, cv2.LINE_AA, 4)
        # Nor are the eyes, or the glasses' rims and lens reflections around them.
        around = max(1, int(round(EYE_RIM * mesh.face_size(points))))
        for eye in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
            loop = [np.round(points[eye] * 16).astype(np.int32)]
            cv2.fillPoly(weight, loop, 0, cv2.LINE_AA, 4)
            cv2.polylines(weight, loop, True, 0, around, cv2.LINE_AA, 4)
        return weight.astype(np.float32) * (1.0 / 255.0)

    def composite(
        self,
        background: np.ndarray,
        patch: np.ndarray,
        origin: tuple[int, int],
        landmarks: np.ndarray,
        occluder: np.ndarray | None = None,
        keep_glasses: bool = False,
    ) -> np.ndarray:
        """The frame with ``patch`` (the avatar warped onto the user, at ``origin``) swapped in.

        ``landmarks``: the user's (N, 2+) in frame pixels; ``occluder``: optional uint8/float
        mask over the patch's box of what covers the face (kept from the frame);
        ``keep_glasses``: the frame of the user's glasses is kept in front too. Without it, a
        blink that shows the user's own eyelids shows no glasses either.
        """
        s = self.settings
        out = background.copy()
        x0, y0 = origin
        h = min(patch.shape[0], out.shape[0] - y0)
        w = min(patch.shape[1], out.shape[1] - x0)
        if h < 8 or w < 8:
            return out
        under_u8 = out[y0 : y0 + h, x0 : x0 + w]
        points = landmarks[:, :2].astype(np.float64) - (x0, y0)
        size = mesh.face_size(points)
        blend, clip = self.masks((h, w), points, (0, 0))
        if s.mouth_from_user and mesh.mouth_opening(points) > 0.02:
            k = 2 * max(1, int(size * 0.03)) + 1
            grow = max(1, int(round(s.mouth_grow * size))) if s.mouth_grow > 0.0 else 0
            # Only the mouth's box (the hole's blur and growth reach past it): the rest keeps 1.
            bx0, by0, bx1, by1 = _box(points[mesh.INNER_LIP], k + grow + 1, (h, w))
            if bx1 > bx0 and by1 > by0:
                hole = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
                lips = np.round((points[mesh.INNER_LIP] - (bx0, by0)) * 4).astype(np.int32)
                cv2.fillPoly(hole, [lips], 255, cv2.LINE_AA, 2)
                if grow:
                    cv2.polylines(hole, [lips], True, 255, grow, cv2.LINE_AA, 2)
                keep = 1.0 - cv2.GaussianBlur(hole, (k, k), 0).astype(np.float32) * (1.0 / 255.0)
                blend[by0:by1, bx0:bx1] *= keep
                # after the pyramid too, or its coarse bands would fill the mouth with skin
                clip[by0:by1, bx0:bx1] *= keep
        closed = self._blink_depth(points) if s.blinks_from_user else 0.0
        glasses = None
        if s.find_glasses:
            # the frame's mask only where it is used: kept in front, or cut out of a blink
            glasses = self._glasses.find(under_u8, points, mask=keep_glasses or closed > 0.0)
        if closed > 0.0:
            self._apply_blink((blend, clip), points, size, closed, None if keep_glasses else glasses)
        occ = None
        if occluder is not None:
            occ = occluder[:h, :w].astype(np.float32)
            if occ.max() > 1.0:
                occ *= 1.0 / 255.0
            blend *= 1.0 - occ
            clip *= 1.0 - occ
        if keep_glasses and glasses is not None:
            # in front like a hand, over the eyes' box only (the shading already leaves the
            # eyes' surroundings out)
            rims, (gx, gy) = glasses
            inside = np.s_[gy : gy + rims.shape[0], gx : gx + rims.shape[1]]
            keep = 1.0 - rims[: h - gy, : w - gx]
            blend[inside] *= keep
            clip[inside] *= keep
        under = under_u8.astype(np.float32)
        # Outside the inner face the avatar warp is not a face: the frame stands in for it,
        # so the pyramid's coarse bands average face with frame, never with garbage.
        clip3 = _channels(clip, under)
        front = patch[:h, :w].astype(np.float32)
        front -= under
        front *= clip3
        front += under
        front = self._relight(front, under_u8, patch[:h, :w], clip, points, size, occ)
        front = self._match_detail(front, under_u8, patch[:h, :w], clip)
        levels = max(1, min(s.levels, int(math.log2(max(2, min(h, w)) / 8))))
        front -= under
        change = blend_difference(front, blend, levels)
        # Clip to the jaw line: the coarse bands must not carry avatar skin past it.
        change *= clip3
        change += under
        np.maximum(change, 0.0, out=change)
        # rounded and saturated: the frame outside the jaw comes back exact
        under_u8[:] = cv2.convertScaleAbs(change)
        return out

    def _blink_depth(self, points: np.ndarray) -> float:
        """How much of the user's own eyes to show (BLINK_SHOWN): 0 open as usual, looking down
        or aside, 1 at the bottom of a blink."""
        opening = mesh.eye_opening(points)
        reference = self._eyes_open if self._eyes_open is not None else opening
        # The usual opening: follows a wider eye at once, a narrower one only slowly.
        self._eyes_open = max(opening, 0.98 * reference + 0.02 * opening)
        start, full = BLINK_SHOWN
        closed = (start * self._eyes_open - opening) / ((start - full) * self._eyes_open + 1e-6)
        return float(np.clip(closed, 0.0, 1.0))

    def _apply_blink(
        self,
        masks: tuple[np.ndarray, ...],
        points: np.ndarray,
        size: float,
        closed: float,
        glasses: tuple[np.ndarray, tuple[int, int]] | None,
    ) -> None:
        """Multiply ``masks`` by 1 − how much of the user's own eyes to show: all of both eye
        regions at the bottom of a blink (``closed`` 1; a warped lid is too faint to read), but
        for the frame of their ``glasses`` (which would flash in)."""
        lids = max(1, int(round(0.12 * size)))
        k = 2 * lids + 1
        eyes_points = points[mesh.RIGHT_EYE + mesh.LEFT_EYE]
        bx0, by0, bx1, by1 = _box(eyes_points, k + lids, masks[0].shape[:2])
        if bx1 <= bx0 or by1 <= by0:
            return
        eyes = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
        for eye in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
            loop = [np.round((points[eye] - (bx0, by0)) * 4).astype(np.int32)]
            cv2.fillPoly(eyes, loop, 255, cv2.LINE_AA, 2)
            cv2.polylines(eyes, loop, True, 255, lids, cv2.LINE_AA, 2)
        shown = cv2.GaussianBlur(eyes, (k, k), 0).astype(np.float32) * (closed / 255.0)
        if glasses is not None:
            rims, (gx, gy) = glasses
            frame = np.zeros_like(shown)
            # the overlap of the eyes' two boxes, in each one's own pixels
            ox0, oy0 = max(bx0, gx), max(by0, gy)
            ox1, oy1 = min(bx1, gx + rims.shape[1]), min(by1, gy + rims.shape[0])
            if ox1 > ox0 and oy1 > oy0:
                frame[oy0 - by0 : oy1 - by0, ox0 - bx0 : ox1 - bx0] = rims[
                    oy0 - gy : oy1 - gy, ox0 - gx : ox1 - gx
                ]
            shown *= 1.0 - frame
        keep = 1.0 - shown
        for mask in masks:
            mask[by0:by1, bx0:bx1] *= keep

    def _relight(
        self,
        front: np.ndarray,
        under_u8: np.ndarray,
        patch_u8: np.ndarray,
        clip: np.ndarray,
        points: np.ndarray,
        size: float,
        occ: np.ndarray | None,
    ) -> np.ndarray:
        """The avatar's detail under the user's low-frequency shading and colour."""
        s = self.settings
        h, w = front.shape[:2]
        # The shading varies over about a third of a face: 12 px per face size is plenty.
        scale = min(1.0, 12.0 / max(size, 1.0))
        small = (max(4, int(round(w * scale))), max(4, int(round(h * scale))))
        sigma = max(0.8, s.relight_sigma * size * scale)
        weight = self.skin_weight(small, points, small[0] / w)
        if occ is not None:
            weight *= 1.0 - _area_down(occ, small)
        if float(weight.sum()) < 4.0:
            return front
        # Measured on small uint8 copies (cheap); ``front`` is the patch inside the jaw line.
        small_user = _area_down(under_u8, small).astype(np.float32)
        small_patch = _area_down(patch_u8, small).astype(np.float32)
        small_clip = _area_down(clip, small)[..., None]
        small_avatar = small_user + (small_patch - small_user) * small_clip
        # Robust statistics: on the user's face, what is far brighter or darker than its skin
        # (specular highlights, a glasses frame) is not the light. On the avatar's, below the
        # eyes, it is its own look (a beard, a moustache): left out, it keeps its darkness. Its
        # dark lids and sockets are a hard light's more often than not, so they are relit.
        weight = weight * _typical(small_user, weight, sigma)
        k = small[0] / w
        own = 1.0 - _below_eyes(weight.shape, points * k, size * k) * (
            1.0 - _typical(small_avatar, weight, sigma)
        )
        weight = weight * own
        if float(weight.sum()) < 4.0:
            return front
        # Brightness follows the user's shading closely; colour only region by region, so a
        # feature the two faces don't share (lipstick, a beard's shadow) doesn't tint the skin.
        low_avatar = _box_mean(small_avatar, weight, sigma)
        fine = (_box_mean(small_user, weight, sigma) + 1.0) / (low_avatar + 1.0)
        coarse_sigma = sigma * COLOUR_SIGMA_FACTOR
        coarse = (_box_mean(small_user, weight, coarse_sigma) + 1.0) / (
            _box_mean(small_avatar, weight, coarse_sigma) + 1.0
        )
        luma = LUMA_BGR
        local = np.clip((fine @ luma) / np.maximum(coarse @ luma, 1e-3), *LOCAL_SHADING)
        ratio = np.clip(coarse * local[..., None], *s.relight_gain)
        # Light scales the avatar's detail; a skin tone far from the user's is not light, so
        # past DETAIL_GAIN the rest of the change is added (low-frequency), not multiplied: a
        # dark avatar on a light face would otherwise get its texture, and every jitter of it,
        # several times stronger.
        gain = np.clip(ratio, *DETAIL_GAIN)
        if self._cap is None or self._frames % DETAIL_EVERY == 0:
            self._update_contrast_cap(under_u8, front, weight, gain @ luma, size)
        if self._cap is not None and self._cap < 1.0:
            # the lips included: left at full gain, a dark avatar's lips came out lipstick-red on
            # a light face, and mediapipe read the dark line above them as an open mouth
            gain *= self._cap
        size_full = (w, h)
        # An avatar darker than the user: its features' colour (brown lids, red lips) is its
        # skin's, not the light's, and brightened with it came out purple and lipstick-red. Their
        # darkness is kept, their hue moves to the user's skin's, the more the darker the avatar.
        brighter = float((ratio @ luma * weight).sum() / float(weight.sum()))
        keep_hue = min(1.0, 1.0 / max(brighter, 1e-3))
        if keep_hue < 0.99:
            keep = np.full(low_avatar.shape[:2], keep_hue, np.float32)  # on the small grid
            low, high = LIP_COLOUR_KEEP
            if keep_hue < high:
                lips = _around_lips(keep.shape, points * k, size * k)
                keep *= 1.0 - min(1.0, (high - keep_hue) / (high - low)) * lips
            return self._relit_in_user_hue(front, low_avatar, ratio, gain, keep, size_full)
        offset = (low_avatar + 1.0) * (ratio - gain)
        front *= cv2.resize(gain, size_full, interpolation=cv2.INTER_LINEAR)
        front += cv2.resize(offset, size_full, interpolation=cv2.INTER_LINEAR)
        return front

    @staticmethod
    def _relit_in_user_hue(
        front: np.ndarray,
        low_avatar: np.ndarray,
        ratio: np.ndarray,
        gain: np.ndarray,
        keep_hue: np.ndarray,
        size_full: tuple[int, int],
    ) -> np.ndarray:
        """The user's low frequencies times the avatar's detail, as its ratio to the avatar's
        own low frequencies: with only ``keep_hue`` of that ratio's colour (the rest is its
        brightness), and its contrast scaled by ``gain`` / ``ratio`` (the detail gain's limit
        and the texture cap). As a ratio, a shadow darkens the user's skin in the user's hue:
        subtracted in a more saturated avatar's own colours, it took more red than the user's
        skin has and turned purple (lids, sockets). All but ``front`` is on the small grid.

        With F = front + 1, A = the avatar's low + 1, U = the user's low + 1, s the contrast:
        out + 1 = U (1 + s (keep F / A + (1 - keep) luma(F) / luma(A) - 1)), i.e.
        out = offset + per_channel * front + per_luma * luma(front), three smooth maps
        resized once, so the full-size work is a few multiply-adds."""
        luma = LUMA_BGR
        avatar_low = low_avatar + 1.0
        user_low = avatar_low * ratio
        strength = ((gain @ luma) / np.maximum(ratio @ luma, 1e-3))[..., None]  # one per pixel: no hue shift
        keep = keep_hue[..., None]
        per_channel = strength * user_low * keep / avatar_low
        per_luma = strength * user_low * (1.0 - keep) / (avatar_low @ luma)[..., None]
        offset = user_low * (1.0 - strength) - 1.0 + per_channel + per_luma
        resize = cv2.INTER_LINEAR
        lum = front @ luma
        front *= cv2.resize(per_channel, size_full, interpolation=resize)
        front += cv2.resize(per_luma, size_full, interpolation=resize) * lum[..., None]
        front += cv2.resize(offset, size_full, interpolation=resize)
        return front

    def _update_contrast_cap(
        self, under_u8: np.ndarray, front: np.ndarray, weight: np.ndarray, gain: np.ndarray, size: float
    ) -> None:
        """How much of the detail gain to keep so the relit avatar's texture (its mid and fine
        bands, on a 48-px-per-face grid) is at most CONTRAST_LIMIT times the user's: a dark,
        hard-lit avatar on a light face would otherwise come out harsh and over-saturated.
        Never below the avatar's own contrast; smoothed over frames, re-measured every
        DETAIL_EVERY frames."""
        h, w = front.shape[:2]
        scale = min(1.0, 48.0 / max(size, 1.0))
        grid = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
        skin = cv2.resize(weight, grid, interpolation=cv2.INTER_LINEAR)
        gain_grid = cv2.resize(gain, grid, interpolation=cv2.INTER_LINEAR)
        luma = LUMA_BGR
        sigma = max(1.0, 0.08 * size * scale)

        def texture(image: np.ndarray) -> float:
            grey = _area_down(image, grid).astype(np.float32) @ luma
            local = cv2.GaussianBlur(grey * skin, (0, 0), sigma) / np.maximum(
                cv2.GaussianBlur(skin, (0, 0), sigma), 1e-4
            )
            detail = grey - local
            return float(np.sqrt((detail**2 * skin).sum() / max(float(skin.sum()), 1e-3)))

        if float(skin.sum()) < 8.0:
            return
        mean_gain = float((gain_grid * skin).sum() / skin.sum())
        user, avatar = texture(under_u8), texture(front) * mean_gain
        cap = 1.0
        if avatar > CONTRAST_LIMIT * user and mean_gain > 1.0:
            cap = max(1.0 / mean_gain, CONTRAST_LIMIT * user / avatar)
        previous = self._cap if self._cap is not None else cap
        self._cap = 0.6 * previous + 0.4 * cap  # every DETAIL_EVERY frames: about 0.8 per frame

    def _match_detail(
        self, front: np.ndarray, under_u8: np.ndarray, patch_u8: np.ndarray, clip: np.ndarray
    ) -> np.ndarray:
        """Scale the avatar's finest band to the camera's, and add the camera's grain."""
        s = self.settings
        self._frames += 1
        if self._detail_gain is None or self._frames % DETAIL_EVERY == 0:
            skin = clip > 0.99
            e_avatar = _fine_energy(patch_u8, skin)
            e_user = _fine_energy(under_u8, skin)
            if e_avatar > 1e-3 and e_user > 1e-3:
                gain = float(np.clip(e_user / e_avatar, *s.detail_gain))
                # Grain from the median response (edges and texture are sparse, noise is everywhere),
                # scaled back to the mean's units.
                n_user, n_avatar = (
                    _fine_energy(under_u8, skin, median=True),
                    _fine_energy(patch_u8, skin, median=True),
                )
                missing = math.sqrt(max(0.0, n_user**2 - (gain * n_avatar) ** 2)) * MEAN_PER_MEDIAN
                missing = missing if s.grain else 0.0
                a = s.smoothing if self._detail_gain is not None else 0.0
                self._detail_gain = a * (self._detail_gain or 0.0) + (1 - a) * gain
                self._grain = a * (self._grain or 0.0) + (1 - a) * missing
        if self._detail_gain is None or self._grain is None:
            return front
        if abs(self._detail_gain - 1.0) > 0.05:
            low = cv2.GaussianBlur(front, (3, 3), 0)
            front = cv2.addWeighted(front, self._detail_gain, low, 1.0 - self._detail_gain, 0.0)
        if self._grain > 0.3:
            h, w = front.shape[:2]
            # The grain's 3x3 Laplacian response is about 2.6 times its standard deviation.
            front += self._noise_tile(h, w) * np.float32(self._grain / 2.6)
        return front

    def _noise_tile(self, h: int, w: int) -> np.ndarray:
        """Fresh-looking camera noise each frame: a random window of a fixed noise field, the
        same in the three channels (grey grain)."""
        nh, nw = self._noise.shape[:2]
        if h > nh or w > nw:
            self._noise = _channels(
                self._rng.standard_normal((max(h, nh), max(w, nw))).astype(np.float32), np.empty((1, 1, 3))
            )
            nh, nw = self._noise.shape[:2]
        y, x, flip = self._rng.integers(0, (nh - h + 1, nw - w + 1, 2))
        tile = self._noise[y : y + h, x : x + w]
        return tile[::-1] if flip else tile
