"""The analytic generator: a dense piecewise-affine mesh warp of the avatar.

Reenact: mediapipe's tessellation (eyes fanned to the iris, mouth fanned to its
centre) plus two anchor rings around the face oval. The inner ring follows the head's
similarity motion, so hair and neck move with it; the outer ring and the frame are
fixed, so the background stays still. When the mouth opens wider than the avatar's,
a mouth interior (cavity and teeth) is painted in.

Swap: the same face triangles map the avatar's face onto the user's landmarks in the
user's own frame, in the box of the inner face; the blend stage composites it
(``realtime.swap``). A turned avatar's far half, or a side-lit avatar's shadowed half, is
sampled from the other half, mirrored (``realtime.frontal``), and hair or headwear inside the
swapped region is painted over with the avatar's skin around it (``realtime.swap.without_hair``).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import Delaunay

from realtime import frontal, mesh
from realtime.frames import Mode, Rendered, Target
from realtime.generators.irises import IrisLayers
from realtime.generators.piecewise import bounding_roi, corner_bounds, rasterise_map
from realtime.stages import Stage
from realtime.swap import inner_face_polygon, without_hair

INNER_RING_SCALE = 1.35  # inner anchor ring: this many times the face oval, from its centre
OUTER_RING_SCALE = 2.3
UPWARD_STRETCH = 1.25  # rings reach further up to carry hair


def _ring(oval: np.ndarray, scale: float) -> np.ndarray:
    centre = oval.mean(axis=0)
    offset = oval - centre
    stretch = np.where(offset[:, 1:2] < 0, UPWARD_STRETCH, 1.0)
    return centre + offset * scale * np.concatenate([np.ones_like(stretch), stretch], axis=1)


def _auto_stride(roi: tuple[int, int, int, int], target_cells: int = 220) -> int:
    return max(1, round(max(roi[2] - roi[0], roi[3] - roi[1]) / target_cells))


class WarpGenerator(Stage):
    """``render(target) -> Rendered``: the avatar warped to the target landmarks."""

    name = "warp"
    provider = "numpy+opencv (CPU)"

    def __init__(
        self,
        avatar_image: np.ndarray,
        avatar_landmarks: np.ndarray,
        mode: Mode | str = Mode.REENACT,
        iris_layers: bool = True,
    ) -> None:
        if mode not in tuple(Mode):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = Mode(mode)
        self.avatar_image = avatar_image
        landmarks = avatar_landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64)
        self.avatar_points = mesh.with_mouth_centre(landmarks)
        # The irises move as layers of their own (``irises``); the mesh samples the avatar without
        # them. Without layers the eyes' fan moves them, at a quarter to a half of a glance.
        self._irises: IrisLayers | None = None
        self._avatar_rigid = landmarks[mesh.RIGID]
        self._avatar_size = mesh.face_size(landmarks)
        self._avatar_mouth = mesh.mouth_opening(landmarks)
        self._mouth_colours = self._sample_mouth_colours(avatar_image, landmarks)
        oval = landmarks[mesh.face_oval()]
        if self.mode is Mode.REENACT:
            self._inner_ring = _ring(oval, INNER_RING_SCALE)
            height, width = avatar_image.shape[:2]
            outer = _ring(oval, OUTER_RING_SCALE)
            frame = np.array(
                [
                    [-1, -1],
                    [width / 2, -1],
                    [width, -1],
                    [width, height / 2],
                    [width, height],
                    [width / 2, height],
                    [-1, height],
                    [-1, height / 2],
                ],
                dtype=np.float64,
            )
            self._fixed = np.concatenate([outer, frame])
            self.source_points = np.concatenate([self.avatar_points, self._inner_ring, self._fixed])
            self.triangles = np.concatenate([self._outer_triangles(oval), mesh.face_triangles()])
            self._static_roi = bounding_roi(outer, avatar_image.shape, margin=2)
            if iris_layers:
                self._irises = IrisLayers(avatar_image, landmarks)
            self._sampled = self._irises.source if self._irises else avatar_image
        else:
            self.source_points = self.avatar_points
            self.triangles = mesh.face_triangles()
            # Hair or headwear inside the swapped region is painted over with the skin around it.
            avatar_image = without_hair(avatar_image, landmarks)
            # A turned avatar's far half, or a side-lit one's shadowed half, is drawn from the
            # other half, mirrored.
            replaced = frontal.mirrored_half(avatar_image, avatar_landmarks)
            self.source_triangles = frontal.source_triangles(replaced, self.triangles)
            if iris_layers:
                self._irises = IrisLayers(avatar_image, landmarks, mirrored=replaced)
                avatar_image = self._irises.source
            # A mipmap of the avatar: a big avatar face drawn small is sampled from the level
            # nearest its drawn size, or bilinear sampling aliases and the face shimmers.
            self._levels = [(avatar_image, self.avatar_points)]
            while mesh.face_size(self._levels[-1][1]) > 48 and min(self._levels[-1][0].shape[:2]) > 32:
                image, points = self._levels[-1]
                self._levels.append((cv2.pyrDown(image), (points + 0.5) / 2.0 - 0.5))

    def _outer_triangles(self, oval: np.ndarray) -> np.ndarray:
        """Delaunay triangles between the face oval and the rings/frame, outside the face."""
        n_face = len(self.avatar_points)
        oval_idx = mesh.face_oval()
        points = np.concatenate([oval, self._inner_ring, self._fixed])
        index = np.concatenate([oval_idx, n_face + np.arange(len(self._inner_ring) + len(self._fixed))])
        tri = Delaunay(points).simplices
        centroids = points[tri].mean(axis=1)
        contour = oval.astype(np.float32).reshape(-1, 1, 2)
        outside = [cv2.pointPolygonTest(contour, (float(x), float(y)), False) < 0 for x, y in centroids]
        return index[tri[np.array(outside)]].astype(np.int32)

    @staticmethod
    def _sample_mouth_colours(image: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [landmarks[mesh.OUTER_LIP].astype(np.int32)], 255)
        cv2.fillPoly(mask, [landmarks[mesh.INNER_LIP].astype(np.int32)], 0)
        lip = np.array(cv2.mean(image, mask=mask)[:3]) if mask.any() else np.array([90.0, 90.0, 160.0])
        skin_mask = np.zeros_like(mask)
        cv2.fillPoly(skin_mask, [landmarks[mesh.face_oval()].astype(np.int32)], 255)
        skin = np.array(cv2.mean(image, mask=skin_mask)[:3]) if skin_mask.any() else np.full(3, 160.0)
        brightness = float(np.clip(skin.mean() / 170.0, 0.5, 1.3))
        return {
            "cavity": lip * 0.22 + np.array([6.0, 4.0, 14.0]),
            "teeth": np.array([208.0, 214.0, 222.0]) * brightness,
        }

    # -- per frame -----------------------------------------------------------------
    def render(self, target: Target) -> Rendered:
        dest = target.landmarks[:, :2].astype(np.float64)
        if self.mode is Mode.REENACT:
            return self._render_reenact(target, dest)
        return self._render_swap(target, dest)

    def _render_reenact(self, target: Target, dest: np.ndarray) -> Rendered:
        scale, rotation, translation = mesh.umeyama(self._avatar_rigid, dest[mesh.RIGID])
        inner = self._inner_ring @ (scale * rotation).T + translation
        dest_all = np.concatenate([dest, inner, self._fixed])
        roi = self._union(
            self._static_roi, bounding_roi(dest_all[: -len(self._fixed)], self.avatar_image.shape)
        )
        patch = self._warp(dest_all, roi)
        self._fill_mouth(patch, dest, roi)
        if self._irises:
            self._irises.paste(patch, roi[:2], dest)
        mask = np.ones(patch.shape[:2], np.float32)
        return Rendered(
            frame=target.frame, patch=patch, mask=mask, origin=roi[:2], background=self.avatar_image
        )

    def _render_swap(self, target: Target, dest: np.ndarray) -> Rendered:
        background = target.frame.image
        # Only the inner face is swapped (``realtime.swap``): warp just its box (outside the
        # polygon the compositor uses the frame itself).
        polygon = inner_face_polygon(dest)
        roi = bounding_roi(polygon, background.shape, margin=3)
        stride = _auto_stride(roi, target_cells=72)
        drawn = mesh.face_size(dest)
        level = 0
        while level + 1 < len(self._levels) and mesh.face_size(self._levels[level + 1][1]) >= drawn:
            level += 1
        source_image, source_points = self._levels[level]
        map_x, map_y = rasterise_map(dest, source_points, self.triangles, roi, stride, self.source_triangles)
        patch = cv2.remap(source_image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self._irises:
            self._irises.paste(patch, roi[:2], dest)
        mask = np.zeros(patch.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(polygon - roi[:2]).astype(np.int32)], 255)
        return Rendered(
            frame=target.frame,
            patch=patch,
            mask=mask.astype(np.float32) / 255.0,
            origin=roi[:2],
            colour_match=True,
            background=background,
            driver_landmarks=dest[: mesh.NUM_LANDMARKS],
        )

    @staticmethod
    def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])

    def _warp(self, dest_all: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
        coarse = _auto_stride(roi, target_cells=56)
        # The face gets a finer map: lips and eyelids move a lot over few pixels, while
        # the hair/neck ring deforms smoothly and is fine on the coarse grid.
        face = bounding_roi(dest_all[: mesh.NUM_LANDMARKS + 1], (roi[3], roi[2]), margin=3)
        face = (max(face[0], roi[0]), max(face[1], roi[1]), face[2], face[3])
        fine = _auto_stride(face, target_cells=100)
        refined = fine < coarse and face[2] > face[0] and face[3] > face[1]
        triangles = self._outside(dest_all, face, 2 * coarse + 1) if refined else self.triangles
        map_x, map_y = rasterise_map(dest_all, self.source_points, triangles, roi, coarse)
        if refined:
            fx, fy = rasterise_map(dest_all, self.source_points, self.triangles, face, fine)
            sx, sy = face[0] - roi[0], face[1] - roi[1]
            map_x[sy : sy + fy.shape[0], sx : sx + fx.shape[1]] = fx
            map_y[sy : sy + fy.shape[0], sx : sx + fx.shape[1]] = fy
        return cv2.remap(self._sampled, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _outside(self, dest_all: np.ndarray, box: tuple[int, int, int, int], margin: int) -> np.ndarray:
        """The triangles that reach past ``box`` shrunk by ``margin`` px. The fine map replaces
        the coarse one over the face's box, whose inside the coarse map needs only within a
        coarse cell of its edge (interpolation), so the face's own triangles are skipped there."""
        low, high = corner_bounds(dest_all[self.triangles])
        hidden = (
            (low[:, 0] >= box[0] + margin)
            & (low[:, 1] >= box[1] + margin)
            & (high[:, 0] <= box[2] - margin)
            & (high[:, 1] <= box[3] - margin)
        )
        return self.triangles[~hidden]

    def _fill_mouth(self, patch: np.ndarray, dest: np.ndarray, roi: tuple[int, int, int, int]) -> None:
        """Paint a mouth interior where the target mouth is open wider than the avatar's."""
        opening = mesh.mouth_opening(dest)
        # An avatar whose own mouth is open (teeth showing) keeps its real interior,
        # stretched, until the target opens much wider than it.
        threshold = max(self._avatar_mouth + 0.015, 1.6 * self._avatar_mouth)
        strength = float(np.clip((opening - threshold) / 0.05, 0.0, 1.0))
        if strength <= 0.0:
            return
        origin = np.array(roi[:2], np.float64)
        lip = dest[mesh.INNER_LIP] - origin
        box = bounding_roi(lip, patch.shape, margin=3)
        bx0, by0, bx1, by1 = box
        if bx1 - bx0 < 3 or by1 - by0 < 3:
            return
        local = lip - [bx0, by0]
        shape = (by1 - by0, bx1 - bx0)
        hole = np.zeros(shape, np.uint8)
        cv2.fillPoly(hole, [np.round(local).astype(np.int32)], 255)
        gap = float(np.linalg.norm(dest[mesh.UPPER_LIP_INNER_MID] - dest[mesh.LOWER_LIP_INNER_MID]))
        width = float(np.linalg.norm(dest[mesh.MOUTH_RIGHT_CORNER] - dest[mesh.MOUTH_LEFT_CORNER]))
        interior = np.empty(shape + (3,), np.float32)
        interior[:] = self._mouth_colours["cavity"]
        # Upper teeth hang from the upper inner lip; lower teeth show less.
        upper = np.round(local[:11]).astype(np.int32)
        lower = np.round(local[[0] + list(range(19, 10, -1))]).astype(np.int32)
        teeth = np.zeros(shape, np.uint8)
        tooth_h = max(1, int(min(gap * 0.28, width * 0.12)))
        cv2.polylines(teeth, [upper + [0, tooth_h // 2]], False, 255, thickness=tooth_h + 1)
        cv2.polylines(teeth, [lower - [0, tooth_h // 4]], False, 160, thickness=max(1, tooth_h // 2))
        # Teeth show between the canines, not in the mouth corners.
        centre_x = (local[0, 0] + local[10, 0]) / 2.0
        columns = np.abs(np.arange(shape[1], dtype=np.float32) - centre_x) < 0.36 * width
        teeth[:, ~columns] = 0
        teeth_alpha = cv2.GaussianBlur(teeth.astype(np.float32) / 255.0, (0, 0), max(0.6, tooth_h / 5))[
            ..., None
        ]
        interior = interior * (1 - teeth_alpha) + self._mouth_colours["teeth"] * teeth_alpha
        alpha = (
            cv2.GaussianBlur(hole.astype(np.float32) / 255.0, (0, 0), max(0.6, gap / 14))[..., None]
            * strength
        )
        region = patch[by0:by1, bx0:bx1].astype(np.float32)
        patch[by0:by1, bx0:bx1] = (region * (1 - alpha) + interior * alpha).astype(np.uint8)
