"""Avatar folders made by ``realtime enroll``: a person's still plus a refiner fine-tuned on them.

    avatars/NAME/avatar.json    the manifest (what is where, the enrolment video, its numbers)
    avatars/NAME/avatar.png     the still the live modes animate
    avatars/NAME/refiner.onnx   the person's own refiner (+ refiner.json card, refiner.pt weights)

``--avatar avatars/NAME`` draws that avatar with its own refiner unless ``--generator`` names
another. No torch here: the runtime only reads the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from realtime.errors import UserError

MANIFEST_NAME = "avatar.json"
IMAGE_NAME = "avatar.png"
REFINER_NAME = "refiner.onnx"


@dataclass(frozen=True)
class AvatarFolder:
    path: str
    name: str
    image: str  # the still's path
    refiner: str | None  # the folder's refiner ONNX (its card beside it), or None
    manifest: dict


def is_avatar_folder(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_NAME))


def read_avatar_folder(path: str | os.PathLike) -> AvatarFolder:
    """The folder's manifest and files, or a one-line UserError naming what is missing."""
    path = str(path)
    manifest_path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"{path} is not an avatar folder (no {MANIFEST_NAME}; `realtime enroll` makes one)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"avatar folder {path}: {MANIFEST_NAME} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "avatar":
        raise UserError(f"avatar folder {path}: {MANIFEST_NAME} is not an avatar manifest")
    image = os.path.join(path, str(manifest.get("image", IMAGE_NAME)))
    if not os.path.isfile(image):
        raise UserError(f"avatar folder {path} lacks its image {os.path.basename(image)}")
    refiner = manifest.get("refiner")
    refiner_path = os.path.join(path, str(refiner)) if refiner else None
    if refiner_path is not None and not os.path.isfile(refiner_path):
        raise UserError(f"avatar folder {path} lacks its refiner {refiner}; enrol again or give --generator")
    name = str(manifest.get("name") or os.path.basename(os.path.normpath(path)))
    return AvatarFolder(path, name, image, refiner_path, manifest)
