"""Derive the face mesh's left-right correspondence and store it in the topology file.

    python scripts/derive_face_mirror.py [--check]

mediapipe's 478 landmarks come from a symmetric canonical mesh, but the package ships no list
of which point mirrors which. Here mediapipe finds the landmarks on a face and on the same image
flipped left to right; flipped back, each point of the second set lands on its mirror partner
of the first. The distances (in face sizes) are summed over a few images, then the partners are
matched one to one (Hungarian). Images: the built-in portrait (scikit-image's astronaut), and the
first frames of four clips of ``../shared/media`` where present. ``--check`` only compares with the stored map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from realtime import mesh
from realtime.avatar import builtin_portrait
from realtime.tracking import FaceMeshDetector

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = (
    "webcam/spectre_mead_W015_neutral.mp4",
    "webcam/spectre_mead_M003_happy.mp4",
    "webcam/spectre_mead_W036_happy.mp4",
    "clips/extra_rppg_man_darkskin.mp4",
)


def images() -> list[np.ndarray]:
    found = [builtin_portrait()]
    for clip in CLIPS:
        capture = cv2.VideoCapture(str(MEDIA / clip))
        ok, image = capture.read()
        capture.release()
        if ok:
            found.append(image)
    return found


def mirror_costs(detector: FaceMeshDetector, image: np.ndarray) -> np.ndarray | None:
    """(478, 478): distance from point i, flipped, to point j found on the flipped image."""
    faces, flipped_faces = detector.detect(image), detector.detect(np.ascontiguousarray(image[:, ::-1]))
    if not faces or not flipped_faces:
        return None
    face, other = faces[0][:, :2].copy(), flipped_faces[0][:, :2]
    face[:, 0] = image.shape[1] - 1 - face[:, 0]
    return np.linalg.norm(face[:, None] - other[None], axis=2) / mesh.face_size(faces[0])


def derive() -> np.ndarray:
    total = np.zeros((mesh.NUM_LANDMARKS, mesh.NUM_LANDMARKS))
    used = 0
    with FaceMeshDetector(1, True, 0.5) as detector:
        for image in images():
            costs = mirror_costs(detector, image)
            if costs is not None:
                total += costs
                used += 1
    _, partner = linear_sum_assignment(total)
    gap = np.median(total[np.arange(len(partner)), partner]) / used
    print(f"{used} images; median distance to the partner {gap:.4f} face sizes")
    return partner.astype(np.int32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored map, write nothing")
    args = parser.parse_args()
    partner = derive()
    if not np.array_equal(partner[partner], np.arange(len(partner))):
        print("the matching is not its own inverse; not stored", file=sys.stderr)
        return 1
    with np.load(mesh.TOPOLOGY_FILE) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if args.check:
        same = "mirror" in arrays and np.array_equal(arrays["mirror"], partner)
        print("matches the stored map" if same else "differs from the stored map")
        return 0 if same else 1
    arrays["mirror"] = partner
    np.savez_compressed(mesh.TOPOLOGY_FILE, **arrays)
    midline = int((partner == np.arange(len(partner))).sum())
    print(f"stored in {mesh.TOPOLOGY_FILE} ({midline} points on the midline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
