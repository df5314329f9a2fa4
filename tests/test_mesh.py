from __future__ import annotations

import numpy as np

from realtime import mesh


def test_shipped_topology_matches_mediapipe():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    assert np.array_equal(mesh.triangles_from_edges(set(fmc.FACEMESH_TESSELATION)), mesh.skin_triangles())
    assert mesh.ordered_loop(set(fmc.FACEMESH_FACE_OVAL)) == mesh.face_oval().tolist()
    assert len(mesh.face_oval()) == 36 and mesh.skin_triangles().shape == (854, 3)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    dst = 1.7 * src @ rotation.T + [3.0, -1.0, 0.5]
    scale, r, t = mesh.umeyama(src, dst)
    assert np.isclose(scale, 1.7) and np.allclose(r, rotation) and np.allclose(t, [3.0, -1.0, 0.5])


def test_the_mirror_map_pairs_each_point_with_its_partner_across_the_midline():
    partner = mesh.mirror()
    assert np.array_equal(partner[partner], np.arange(len(partner)))  # its own inverse
    assert (partner == np.arange(len(partner))).sum() == 29  # 28 midline points and the mouth centre
    assert partner[mesh.RIGHT_EYE].tolist() == mesh.LEFT_EYE
    assert partner[mesh.RIGHT_IRIS_CENTRE] == mesh.LEFT_IRIS_CENTRE
    assert sorted(partner[mesh.RIGHT_IRIS]) == mesh.LEFT_IRIS
    assert sorted(partner[mesh.OUTER_LIP]) == sorted(mesh.OUTER_LIP)
    # The tessellation is symmetric but for a few quads split along the other diagonal: every
    # mirrored triangle keeps at least two of its edges in the mesh.
    triangles = mesh.face_triangles()
    edges = {frozenset(e) for t in triangles.tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2]))}
    mirrored = partner[triangles].tolist()
    kept = [sum(frozenset(e) in edges for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2]))) for t in mirrored]
    assert min(kept) >= 2 and sum(k == 3 for k in kept) >= 0.98 * len(kept)


def test_the_mirror_map_is_what_mediapipe_finds_on_a_flipped_face(astronaut):
    """On the built-in portrait and on it flipped left to right, each point lands (flipped
    back) on its partner's place."""
    from realtime.tracking import find_face

    face = find_face(astronaut)
    flipped = find_face(np.ascontiguousarray(astronaut[:, ::-1]))
    back = flipped[:, :2].copy()
    back[:, 0] = astronaut.shape[1] - 1 - back[:, 0]
    size = mesh.face_size(face)
    gaps = np.linalg.norm(back[mesh.mirror()[: mesh.NUM_LANDMARKS]] - face[:, :2], axis=1) / size
    assert np.median(gaps) < 0.03 and np.percentile(gaps, 95) < 0.06
    # and a wrong pairing would not pass: the identity is far off on both halves
    assert np.median(np.linalg.norm(back - face[:, :2], axis=1) / size) > 0.1


def _turned(points: np.ndarray, degrees: float) -> np.ndarray:
    """Landmarks (x, y, depth) turned about the vertical axis through their rigid centre, the
    person's left side away from the camera for positive ``degrees``."""
    a = np.radians(degrees)
    centre = points[mesh.RIGID].mean(axis=0)
    rotation = np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])
    return (points - centre) @ rotation.T + centre


def test_a_turned_face_is_turned_back_to_the_camera(astronaut):
    from realtime.tracking import find_face

    face = find_face(astronaut).astype(np.float64)
    own = mesh.yaw_degrees(face)
    assert abs(own) < 5.0  # the portrait faces the camera
    for degrees in (-35.0, 20.0):
        turned = _turned(face, degrees)
        assert abs(mesh.yaw_degrees(turned) - own - degrees) < 1.0
        far = mesh.far_side(turned)
        # the half that turned away: the person's left for a positive yaw
        assert far[mesh.LEFT_EYE_OUTER] == (degrees > 0) and far[mesh.RIGHT_EYE_OUTER] == (degrees < 0)
        assert far.sum() == 225 and not far[mesh.NOSE_TIP]
        # Turned back, it has the portrait's proportions again (up to a similarity: the turn is
        # about the rigid centre, frontal's about the same).
        back = mesh.frontal(turned)
        s, r, t = mesh.umeyama(back, face[:, :2])
        error = np.linalg.norm(back @ (s * r).T + t - face[:, :2], axis=1).max() / mesh.face_size(face)
        squeezed = np.linalg.norm(turned[:, :2] - face[:, :2], axis=1).max() / mesh.face_size(face)
        assert error < 0.05 < squeezed
