"""One onnxruntime runner for every ONNX generator, and the face-crop refiner built on it.

The runner hides the execution provider (TensorRT, CUDA, CoreML, DirectML or CPU): it
tries them in order, reports the one that actually runs (onnxruntime-gpu silently falls
back to CPU when CUDA can't load), warms up, and uses IO binding.
"""

from __future__ import annotations

import json
import logging
import os
import time

import cv2
import numpy as np

from realtime import mesh
from realtime.crops import (
    CARD_PASTE_RULES,
    IN_DRIVER,
    IN_FILL_MASK,
    IN_LANDMARKS,
    IN_SOURCE,
    IN_WARPED,
    LAYOUTS,
    OUT_FLOW,
    OUT_IMAGE,
    REFINER_DRIVER_INPUTS,
    REFINER_OUTPUTS,
    REGIONS,
    CropSpec,
    antialiased_warp,
    crop_matrices,
    dark_centre_weight,
    displace,
    driver_map,
    fill_mask,
    footprint,
    landmark_map,
    to_tensor,
)
from realtime.errors import UserError
from realtime.frames import Rendered, Target
from realtime.generators.piecewise import bounding_roi
from realtime.stages import Stage

logger = logging.getLogger(__name__)

PREFERRED_PROVIDERS = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            "onnxruntime is not installed: pip install 'realtime[cpu]' (or 'realtime[gpu]' for CUDA, never both)"
        ) from exc
    return onnxruntime


def _provider_options(name: str, cache_dir: str) -> tuple[str, dict] | str:
    if name == "TensorrtExecutionProvider":
        return name, {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache_dir,
            "trt_fp16_enable": True,
        }
    return name


# ``threads="auto"`` on a CPU: one intra-op thread unless it is this much slower than the pool.
# A small model (the refiner's 48-px crops) often runs as fast on one thread, and the pool's
# helper thread costs CPU that the tracker and the call app need.
ONE_THREAD_SLOWER_MAX = 1.1
THREAD_PROBE_RUNS = 15


def one_thread_pays(one_thread_ms: list[float], pool_ms: list[float]) -> bool:
    """Whether one intra-op thread is fast enough, from interleaved timings of the same runs."""
    return float(np.median(one_thread_ms)) <= ONE_THREAD_SLOWER_MAX * float(np.median(pool_ms))


class OnnxRunner:
    """Load an ONNX model, pick a provider with fallback, warm up, run with IO binding.

    ``threads``: onnxruntime's intra-op threads; 0 its default (one per core); "auto" times one
    thread against the default at warm-up on a CPU and keeps one thread if it pays
    (``one_thread_pays``)."""

    def __init__(
        self, path: str, providers: list[str] | None = None, threads: int | str = 0, warmup: int = 2
    ) -> None:
        ort = import_onnxruntime()
        if not os.path.isfile(path):
            raise UserError(f"model not found: {path}")
        with open(path, "rb") as f:
            head = f.read(64)
        if not head or head.startswith((b"PK", b"\x80")):  # zip/pickle: a torch checkpoint, not ONNX
            raise UserError(f"model is not an ONNX file (pickled checkpoints are never loaded): {path}")
        available = ort.get_available_providers()
        wanted = providers or PREFERRED_PROVIDERS
        chosen = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        cache_dir = os.path.join(os.path.dirname(os.path.abspath(path)), ".trt_cache")
        self._auto_threads = threads == "auto"
        self.threads = 0 if self._auto_threads else int(threads)
        try:
            self.session = ort.InferenceSession(
                path,
                sess_options=self._options(ort, self.threads),
                providers=[_provider_options(p, cache_dir) for p in chosen],
            )
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"model could not be loaded as ONNX ({first_line[:160]}): {path}") from exc
        self.path = path
        self.requested = chosen
        # What actually runs: onnxruntime drops providers that fail to initialise.
        self.provider = self.session.get_providers()[0]
        if self.provider != chosen[0]:
            logger.warning("wanted %s, running on %s", chosen[0], self.provider)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._device = (
            "cuda" if self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        )
        self._warmup = warmup

    @staticmethod
    def _options(ort, threads: int):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle onnxruntime threads would otherwise spin after each run, on the core the
        # tracker process needs next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return options

    def input_shape(self, name: str) -> list:
        return list(self.inputs[name].shape)

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        for _ in range(self._warmup):
            self.run(feeds)
        if self._auto_threads and self.provider == "CPUExecutionProvider" and (os.cpu_count() or 1) > 1:
            self._pick_threads(feeds)

    def _pick_threads(self, feeds: dict[str, np.ndarray]) -> None:
        ort = import_onnxruntime()
        pool = self.session
        one = ort.InferenceSession(
            self.path, sess_options=self._options(ort, 1), providers=["CPUExecutionProvider"]
        )
        self._run(one, feeds)
        pool_ms, one_ms = [], []
        for _ in range(THREAD_PROBE_RUNS):  # interleaved, so a busy moment hits both alike
            for session, times in ((pool, pool_ms), (one, one_ms)):
                started = time.perf_counter()
                self._run(session, feeds)
                times.append((time.perf_counter() - started) * 1000.0)
        if one_thread_pays(one_ms, pool_ms):
            self.session, self.threads = one, 1
        logger.info(
            "%s: %.2f ms on one thread, %.2f ms on the pool: %s",
            os.path.basename(self.path),
            float(np.median(one_ms)),
            float(np.median(pool_ms)),
            "one thread" if self.threads == 1 else "the pool",
        )

    def _run(self, session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, self._device)
        session.run_with_iobinding(binding)
        return dict(zip(self.outputs, binding.copy_outputs_to_cpu(), strict=True))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.session, feeds)


# The card fields OnnxRefinerGenerator reads to cut crops and paste corrections (a remote
# server hands these to its clients).
PASTE_CARD_FIELDS = ("crop", "apply_regions", "confine", "correction", *CARD_PASTE_RULES)
CORRECTIONS = ("rgb", "luma")
# Card "confine": where each region crop's correction may land (mouth, right eye, left eye).
# "features": the lips and eyes; "openings": the inner mouth and the eyes; absent: everywhere.
CONFINES = {
    None: [None] * len(REGIONS),
    "features": [mesh.OUTER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE],
    "openings": [mesh.INNER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE],
}
# Card "darken_only": region crops ("mouth", "eyes") whose correction may only darken the warp.
# A bright band painted over a cavity reads as a closed mouth; shading keeps the opening readable.
DARKENABLE = ("mouth", "eyes")
# Card "dark_centre": region crops whose correction may brighten only near the opening's rim (teeth
# below the lips); around its centre line it may only darken (crops.dark_centre_weight).
LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # BT.601 weights; they sum to 1
# The mouth crop's correction is not pasted where the crop would enlarge the image (its scale
# above this): a mouth a few pixels wide gains nothing from it, and its shading made the judging
# tracker read such a mouth less open (benchmarks/RESULTS.md, session 23).
MOUTH_UPSCALE_MAX = 1.0


def region_gate(points: np.ndarray, size: int, loops: list) -> np.ndarray:
    """Soft mask of the landmark loops ``loops``, a little dilated and feathered."""
    gate = np.zeros((size, size), np.uint8)
    for loop in loops:
        cv2.fillPoly(gate, [np.round(points[loop]).astype(np.int32)], 255)
    grow = max(3, int(size * 0.06)) | 1
    gate = cv2.dilate(gate, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
    return cv2.GaussianBlur(gate.astype(np.float32) / 255.0, (0, 0), grow / 3)


def applied_correction(
    delta: np.ndarray,
    points: np.ndarray,
    fill: np.ndarray,
    luma_only: bool,
    darken_only: bool,
    dark_centre: bool,
    gate_loops: list | None,
) -> np.ndarray:
    """What the card's paste rules let through of one crop's correction ``delta`` (float32 BGR
    (S, S, 3), changed in place and returned): its brightness only, only darker, brighter only
    near the opening's rim (``fill``: the crop's openings), gated to ``gate_loops`` of ``points``."""
    if luma_only:
        delta[:] = (delta @ LUMA_BGR)[..., None]
    if darken_only:
        np.minimum(delta, 0.0, out=delta)
    elif dark_centre:
        rim = dark_centre_weight(fill)[..., None]
        delta[:] = np.minimum(delta, 0.0) + np.maximum(delta, 0.0) * rim
    if gate_loops:
        delta *= region_gate(points, delta.shape[0], gate_loops)[..., None]
    return delta


class OnnxRefinerGenerator(Stage):
    """Warp first, then an ONNX model refines aligned crops; the correction is pasted back.

    Model contract (names, NCHW float32, RGB in [0, 1]; N crops of the card's layout, 1 for
    the whole face, 3 for mouth/right eye/left eye): inputs ``warped`` (N,3,S,S) and
    optionally ``source`` (the avatar's own crops), ``landmarks`` (N,1,S,S),
    ``fill_mask`` (N,1,S,S, the openings: where the warp has nothing to show) and
    ``driver`` (N,1,S,S, the user's openings: ``driver_map``, zero while the face is lost);
    outputs ``image`` (N,3,S,S), ``mask`` (N,1,S,S) and optionally ``flow`` (N,2,S,S).
    """

    REQUIRED_INPUTS = {IN_WARPED}
    OPTIONAL_INPUTS = set(REFINER_DRIVER_INPUTS) - REQUIRED_INPUTS
    REQUIRED_OUTPUTS = set(REFINER_OUTPUTS)

    def __init__(
        self,
        path: str,
        warp,
        providers: list[str] | None = None,
        runner=None,
        card: dict | None = None,
    ) -> None:
        # ``runner`` and ``card``: the model runs elsewhere (``realtime.generators.remote``); any
        # object with OnnxRunner's inputs/outputs/input_shape/provider/warm_up/run will do, and
        # its ``run`` may return None (no answer in time: the frame keeps the warp).
        self.runner = runner if runner is not None else OnnxRunner(path, providers, threads="auto")
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.warp = warp
        names = set(self.runner.inputs)
        if not self.REQUIRED_INPUTS <= names or not names <= self.REQUIRED_INPUTS | self.OPTIONAL_INPUTS:
            raise UserError(
                f"model {path} has inputs {sorted(names)}; a generator needs '{IN_WARPED}' and optionally "
                f"{sorted(self.OPTIONAL_INPUTS)}"
            )
        if not self.REQUIRED_OUTPUTS <= set(self.runner.outputs):
            raise UserError(
                f"model {path} has outputs {self.runner.outputs}; a generator needs {sorted(self.REQUIRED_OUTPUTS)}"
            )
        if card is None:
            card_path = os.path.splitext(path)[0] + ".json"  # the model card beside the .onnx
            card = json.load(open(card_path)) if os.path.exists(card_path) else {}
        self.card = card
        crop = self.card.get("crop", {})
        shape = self.runner.input_shape(IN_WARPED)
        size = shape[-1] if isinstance(shape[-1], int) else int(crop.get("size", 256))
        layout = crop.get("layout", "face")
        if layout not in LAYOUTS:
            raise UserError(f"model card of {path} names an unknown crop layout {layout!r}")
        self.spec = CropSpec(size=size, face_scale=float(crop.get("face_scale", 0.32)), layout=layout)
        avatar_matrices = crop_matrices(warp.avatar_points, self.spec)
        if isinstance(shape[0], int) and shape[0] != len(avatar_matrices):
            raise UserError(
                f"model {path} takes {shape[0]} crops per frame, its '{layout}' layout makes {len(avatar_matrices)}"
            )
        self._source = np.concatenate(
            [to_tensor(antialiased_warp(warp.avatar_image, m, size)) for m in avatar_matrices]
        )
        # Where the correction is applied: everywhere unless the card names regions (set
        # from held-out evaluation: where the model measurably beats the warp). A face crop
        # is then gated to those regions; region crops of other regions are not pasted.
        self._regions = [r for r in self.card.get("apply_regions", []) if r in ("mouth", "eyes")]
        gated_regions = self._regions and layout == "regions"
        self._pasted = [
            not gated_regions or ("mouth" if name == "mouth" else "eyes") in self._regions
            for name in (REGIONS if layout == "regions" else ["face"])
        ]
        self._mouth_crop = list(REGIONS).index("mouth") if layout == "regions" else None
        # Each crop's correction is gated to these landmark loops (None: applied whole). A face
        # crop: the card's regions. A region crop with the card's "confine" (CONFINES): only inside
        # its own feature or opening, so skin, moustache and brows keep the avatar's look.
        if layout == "face":
            loops = {"mouth": [mesh.OUTER_LIP], "eyes": [mesh.RIGHT_EYE, mesh.LEFT_EYE]}
            self._gate_loops = [[lp for r in self._regions for lp in loops[r]] or None]
        else:
            confine = self.card.get("confine")
            if confine not in CONFINES:
                raise UserError(f"model card of {path} names an unknown confine {confine!r}")
            self._gate_loops = [[loop] if confine else None for loop in CONFINES[confine]]
        # "luma": only the brightness of a correction is applied, so the output keeps the warp's
        # colours, which are the avatar's own (a grey portrait stays grey).
        correction = self.card.get("correction", "rgb")
        if correction not in CORRECTIONS:
            raise UserError(f"model card of {path} names an unknown correction {correction!r}")
        self._luma_only = correction == "luma"
        rules = {rule: self.card.get(rule, []) for rule in CARD_PASTE_RULES}
        for rule, regions in rules.items():
            if not set(regions) <= set(DARKENABLE) or (regions and layout != "regions"):
                raise UserError(f"model card of {path} names {rule} {regions!r}: region crops {DARKENABLE}")
        both = set(rules["darken_only"]) & set(rules["dark_centre"])
        if both:
            raise UserError(f"model card of {path} names {sorted(both)} both darken_only and dark_centre")

        def regions_in(names: list[str]) -> list[bool]:
            if layout != "regions":
                return [False]
            return [("mouth" if name == "mouth" else "eyes") in names for name in REGIONS]

        self._darken_only = regions_in(rules["darken_only"])
        self._dark_centre = regions_in(rules["dark_centre"])
        crops = len(avatar_matrices)
        zeros = np.zeros((crops, 1, size, size), np.float32)
        self.runner.warm_up(self._feeds(np.zeros((crops, 3, size, size), np.float32), zeros, zeros, zeros))

    @staticmethod
    def _crop(base: Rendered, matrix: np.ndarray, footprint: np.ndarray, size: int) -> np.ndarray:
        """An aligned crop of the warped frame. Usually the crop lies inside the warp's
        patch and is cut from it directly; only otherwise is the patch pasted into a copy
        of the whole frame first."""
        x0, y0 = base.origin
        h, w = base.patch.shape[:2]
        inside = (
            footprint[:, 0].min() >= x0
            and footprint[:, 1].min() >= y0
            and footprint[:, 0].max() <= x0 + w - 1
            and footprint[:, 1].max() <= y0 + h - 1
        )
        if inside:
            source = base.patch
            matrix = _from_origin(matrix, x0, y0)
        else:
            source = base.background.copy()
            source[y0 : y0 + h, x0 : x0 + w] = base.patch
        return antialiased_warp(source, matrix, size)

    def _too_small(self, crop: int, matrix: np.ndarray) -> bool:
        """Whether crop ``crop`` is the mouth's and would enlarge the image (MOUTH_UPSCALE_MAX)."""
        return (
            crop == self._mouth_crop and float(np.sqrt(abs(np.linalg.det(matrix[:, :2])))) > MOUTH_UPSCALE_MAX
        )

    @property
    def provider(self) -> str:
        return self.runner.provider

    def _feeds(
        self, warped: np.ndarray, marks: np.ndarray, fill: np.ndarray, driver: np.ndarray
    ) -> dict[str, np.ndarray]:
        available = {
            IN_WARPED: warped,
            IN_SOURCE: self._source,
            IN_LANDMARKS: marks,
            IN_FILL_MASK: fill,
            IN_DRIVER: driver,
        }
        return {name: available[name] for name in self.runner.inputs}

    def _driver_maps(self, target: Target, crops: int) -> np.ndarray:
        """(N,1,S,S) float: the user's openings, cut around the user's own landmarks; zero
        when the model does not take them or no face is tracked."""
        size = self.spec.size
        if IN_DRIVER not in self.runner.inputs or target.driver_landmarks is None:
            return np.zeros((crops, 1, size, size), np.float32)
        points = mesh.with_mouth_centre(target.driver_landmarks[:, :2])
        matrices = crop_matrices(points, self.spec)
        # Grey the crops' part of the frame once: cutting three colour crops and greying each
        # cost three times the shrinking.
        corners = np.concatenate([footprint(cv2.invertAffineTransform(m), size) for m in matrices])
        # A wider margin than antialiased_warp's own, so its shrinking sees the same pixels.
        x0, y0, x1, y1 = bounding_roi(corners, target.frame.image.shape, margin=4)
        grey = cv2.cvtColor(target.frame.image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
        local = points - (x0, y0)
        maps = [driver_map(grey, local, _from_origin(m, x0, y0), self.spec) for m in matrices]
        return np.stack(maps)[:, None].astype(np.float32) / 255.0

    def render(self, target: Target) -> Rendered:
        base = self.warp.render(target)
        if base.background is None:
            return base
        size = self.spec.size
        matrices = crop_matrices(target.landmarks, self.spec)
        # Each crop's inverse and image footprint, once: cutting and pasting both need them.
        inverses = [cv2.invertAffineTransform(m) for m in matrices]
        footprints = [footprint(inverse, size) for inverse in inverses]
        crops, points = [], []
        for k, matrix in enumerate(matrices):
            crops.append(self._crop(base, matrix, footprints[k], size))
            points.append(target.landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2])
        fills = [fill_mask(p, self.spec) for p in points]
        outputs = self.runner.run(
            self._feeds(
                np.concatenate([to_tensor(c) for c in crops]),
                np.concatenate([landmark_map(p, size) for p in points]),
                np.stack(fills)[:, None].astype(np.float32) / 255.0,
                self._driver_maps(target, len(matrices)),
            )
        )
        if outputs is None:  # a remote runner without an answer in time: this frame is the warp's
            return base
        # Each crop's correction (already weighted by the model's mask) is mapped back and
        # added to the full-resolution warp, so a small crop never blurs a large face. A
        # model with a flow moves the full-resolution pixels the same way first.
        h, w = base.patch.shape[:2]
        x0, y0 = base.origin
        boxes: dict[int, tuple[int, int, int, int]] = {}
        for k in range(len(crops)):
            corners = footprints[k] - (x0, y0)
            bx0, by0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
            bx1, by1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, (w, h))
            if self._pasted[k] and bx1 > bx0 and by1 > by0 and not self._too_small(k, matrices[k]):
                boxes[k] = (int(bx0), int(by0), int(bx1), int(by1))
        # Only the crops' boxes are worked on in float (a whole portrait's patch took milliseconds
        # to convert and back); a flow samples the whole patch.
        if OUT_FLOW in outputs or not boxes:
            ux0, uy0, ux1, uy1 = 0, 0, w, h
        else:
            ux0, uy0 = (min(b[i] for b in boxes.values()) for i in (0, 1))
            ux1, uy1 = (max(b[i] for b in boxes.values()) for i in (2, 3))
        out = base.patch  # the warp's own patch of this frame, drawn for this render only
        region = out[uy0:uy1, ux0:ux1].astype(np.float32)
        for k, (bx0, by0, bx1, by1) in boxes.items():
            crop = crops[k]
            inverse = inverses[k].copy()
            inverse[:, 2] -= (x0 + bx0, y0 + by0)
            box = (bx1 - bx0, by1 - by0)
            bx0, by0, bx1, by1 = bx0 - ux0, by0 - uy0, bx1 - ux0, by1 - uy0
            moved = crop.astype(np.float32)
            if OUT_FLOW in outputs:
                flow = outputs[OUT_FLOW][k].transpose(1, 2, 0)
                moved = displace(moved, flow)
                region[by0:by1, bx0:bx1] = displace(
                    region, _image_flow(flow, inverse, box), origin=(bx0, by0)
                )
            refined = outputs[OUT_IMAGE][k].transpose(1, 2, 0)[:, :, ::-1] * 255.0
            delta = applied_correction(
                refined - moved,  # float32 already: the model's output and the crop
                points[k],
                fills[k],
                self._luma_only,
                self._darken_only[k],
                self._dark_centre[k],
                self._gate_loops[k],
            )
            region[by0:by1, bx0:bx1] += cv2.warpAffine(
                delta,
                inverse,
                box,
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(0.0, 0.0, 0.0),
            )
        out[uy0:uy1, ux0:ux1] = np.clip(region, 0, 255).astype(np.uint8)
        return Rendered(
            frame=base.frame,
            patch=out,
            mask=base.mask,
            origin=base.origin,
            colour_match=base.colour_match,
            background=base.background,
            generator=self.name,
            driver_landmarks=base.driver_landmarks,
            occluder=base.occluder,
        )


def _from_origin(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """An image→crop 2x3 ``matrix`` for the sub-image whose pixel (0, 0) is image pixel (x0, y0)."""
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    return shifted


def _image_flow(flow: np.ndarray, inverse: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """A crop's flow (crop pixels) as a flow over an image box: sampled where each image pixel
    lies in the crop (``inverse``: crop→box 2x3) and turned by the crop→image linear map, so
    image pixel p takes its colour from p + L·f(A·p). Zero outside the crop."""
    sampled = cv2.warpAffine(
        np.ascontiguousarray(flow, np.float32),
        inverse,
        box,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0, 0.0, 0.0),
    )
    return cv2.transform(sampled, inverse[:, :2].astype(np.float32))
