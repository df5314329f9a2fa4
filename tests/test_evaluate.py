"""`realtime eval`'s scoring on a real talking head (self-reenactment, first frame as avatar)."""

from __future__ import annotations

import math
from dataclasses import replace

from tests.conftest import media


def test_self_reenactment_scores_follow_the_real_clip():
    from realtime.evaluate import evaluate_clip, format_table, summarise

    score = evaluate_clip(str(media("clips/dreamtalk_mead_W011_happy.mp4")), "warp", max_frames=60)
    assert score.frames == 60 and score.face_found == 1.0
    # The output face sits where the real one is and opens its mouth when the real one does.
    assert score.landmark_error < 0.04
    assert score.mouth_r > 0.8
    assert score.ssim > 0.8 and 0.0 < score.l1 < 0.05
    # The mouth is where the warp is least right, so its error exceeds the whole crop's.
    assert score.mouth_l1 > score.l1
    # ...and inside the lips most of all: the ring around them is mostly skin the warp keeps.
    assert score.lips_l1 > score.mouth_l1
    assert math.isfinite(score.flicker) and len(score.samples) >= 3
    table = format_table({"warp": summarise([score])})
    assert table.count("\n") == 2 and "| warp |" in table
    # This speaker never blinks in these frames, so her blink r is not counted among the blinking.
    assert score.driver_blinks == 0
    assert math.isnan(summarise([score])["mean"]["blink_r_blinking"])
    blinking = replace(score, clip="blinks", driver_blinks=6, blink_r=0.9)
    mean = summarise([score, blinking])["mean"]
    assert mean["blink_r_blinking"] == 0.9 and mean["blink_r"] == round((score.blink_r + 0.9) / 2, 4)
