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
