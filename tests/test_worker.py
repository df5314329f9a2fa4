"""The child-process worker helper: handshake, calls, events, logs, Ctrl+C and shutdown."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from realtime.worker import ChildWorker, WorkerChannel, WorkerError


def _scaler(channel: WorkerChannel, factor: float) -> str:
    logging.getLogger("tests.worker_child").warning("serving with factor %s", factor)
    channel.ready({"pid": os.getpid()})
    served = 0
    for request in channel.requests():
        if request == "bad":
            channel.reply_error("ValueError: bad request")
            continue
        if request == "exit":
            os._exit(3)  # dies mid-call, as a crashed native library would
        served += 1
        channel.notify(("served", served))
        channel.reply(request * factor)
    return f"served {served}"


def _broken(channel: WorkerChannel) -> None:
    raise ImportError("no module named 'mediapipe'\nsecond line")


def _silent(channel: WorkerChannel) -> None:
    time.sleep(60)  # never ready


def _stubborn(channel: WorkerChannel) -> None:
    channel.ready()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only a kill ends it
    for _ in channel.requests(idle_s=0.05):
        pass
    time.sleep(60)  # asked to close, it does not


def test_calls_events_logs_and_the_result_come_back(caplog):
    worker = ChildWorker(_scaler, (2.0,), name="scaler")
    with caplog.at_level(logging.INFO):
        with worker:
            assert worker.alive and worker.info["pid"] == worker.pid != os.getpid()
            assert worker.call(21) == 42.0
            assert worker.call(1.5, timeout_s=10.0) == 3.0
            with pytest.raises(WorkerError, match="ValueError: bad request"):
                worker.call("bad")
            assert worker.call(2) == 4.0  # a failed request leaves the worker serving
            assert worker.events() == [("served", 1), ("served", 2), ("served", 3)]
            assert worker.events() == []
        assert not worker.alive
    assert worker.result == "served 3"
    forwarded = [r for r in caplog.records if r.name == "tests.worker_child"]
    assert [r.getMessage() for r in forwarded] == ["serving with factor 2.0"]


def test_a_child_that_fails_to_set_up_is_one_line():
    worker = ChildWorker(_broken, name="tracker")
    with pytest.raises(WorkerError) as info:
        worker.open()
    assert str(info.value) == "ImportError: no module named 'mediapipe' second line"
    assert not worker.alive and worker.pid is None


def test_a_child_that_never_gets_ready_times_out_and_is_stopped():
    worker = ChildWorker(_silent, name="audio", start_timeout_s=1.0, close_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"^the audio process did not start within 1 s$"):
        worker.open()
    assert time.monotonic() - t0 < 10.0 and worker.pid is None


def test_close_kills_a_child_that_ignores_close_and_sigterm():
    worker = ChildWorker(_stubborn, name="stubborn", close_timeout_s=0.5).open()
    process = worker._process
    worker.close()
    assert not process.is_alive() and process.exitcode == -signal.SIGKILL
    worker.close()  # idempotent


def test_the_child_ignores_ctrl_c_and_a_dead_child_is_reported():
    with ChildWorker(_scaler, (3.0,), name="scaler") as worker:
        os.kill(worker.pid, signal.SIGINT)  # as a terminal's Ctrl+C reaches the whole group
        time.sleep(0.2)
        assert worker.call(2) == 6.0
        with pytest.raises(WorkerError, match="the scaler process has gone"):
            worker.call("exit")
        assert not worker.alive
        with pytest.raises(WorkerError, match="not running"):
            worker.call(1)


def test_the_tracker_process_matches_the_detector_and_restarts_after_a_crash(astronaut, caplog):
    import numpy as np

    from realtime.tracking import FaceMeshDetector, FaceMeshProcess

    isolated = FaceMeshProcess(1, True, 0.5)
    assert isolated._worker is None and isolated._shm is None  # built, not started
    with FaceMeshDetector(1, True, 0.5) as local, isolated:
        expected = local.detect(astronaut)
        assert len(expected) == 1
        np.testing.assert_allclose(isolated.detect(astronaut)[0], expected[0], atol=1e-3)
        os.kill(isolated._worker.pid, signal.SIGKILL)
        isolated._worker._process.join(timeout=10.0)
        with caplog.at_level(logging.WARNING, logger="realtime.tracking"):
            np.testing.assert_allclose(isolated.detect(astronaut)[0], expected[0], atol=1e-3)
        assert "tracker process is gone; restarting it" in caplog.text
    assert isolated._worker is None and isolated._shm is None
