"""The torch-free parts of multi-process mode: the audio ring, job messages, merged worker
status, --workers / --devices, and a WorkerProxy against a model process played by the test
over a real multiprocessing connection."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Listener

import numpy as np
import pytest

from ichigo_stream.actions import Job, JobResult
from ichigo_stream_server.admission import Admission
from ichigo_stream_server.config import (
    MAX_DEFAULT_WORKERS,
    add_serve_arguments,
    config_from_args,
    default_workers,
)
from ichigo_stream_server.metrics import Histogram, ServerMetrics, WorkerStats
from ichigo_stream_server.model_link import (
    AdmitMessage,
    CancelMessage,
    EvictedMessage,
    Hello,
    JobMessage,
    MetricsBoard,
    MetricsMessage,
    ResultMessage,
    SessionClosedMessage,
    StatusMessage,
    WorkerStatus,
    merged_admission,
    merged_status,
)
from ichigo_stream_server.shared_audio import HEADER_BYTES, AudioRing, create_ring_memory
from ichigo_stream_server.worker_proxy import WorkerProxy


@pytest.fixture
def ring_pair() -> Iterator[tuple[AudioRing, AudioRing]]:
    memory = create_ring_memory(4096)
    producer, consumer = AudioRing.attach(memory.name), AudioRing.attach(memory.name)
    yield producer, consumer
    producer.close()
    consumer.close()
    memory.close()
    memory.unlink()


def job(session: str = "s1", samples: int = 100, kind: str = "final") -> Job:
    audio = np.random.default_rng(len(session) + samples).random(samples, dtype=np.float32)
    return Job(session, 0, kind, 0, samples, audio)  # type: ignore[arg-type]


# -- the ring -------------------------------------------------------------------------------------


def test_the_ring_carries_audio_exactly_and_frees_it_when_read(
    ring_pair: tuple[AudioRing, AudioRing],
) -> None:
    producer, consumer = ring_pair
    assert producer.capacity == 4096 and producer.memory.size >= HEADER_BYTES + 4096
    for i in range(50):  # many laps of the buffer, sizes that do not divide it
        audio = np.random.default_rng(i).random(100 + 37 * (i % 7), dtype=np.float32)
        slot = producer.write(audio)
        assert slot is not None, i
        assert slot.nbytes <= producer.in_flight  # with alignment and a skipped tail
        out = consumer.read(slot)
        np.testing.assert_array_equal(out, audio)
        assert out.dtype == np.float32 and producer.in_flight == 0
    pcm = np.arange(-300, 300, dtype=np.int16)  # any dtype
    np.testing.assert_array_equal(consumer.read(producer.write(pcm)), pcm)  # type: ignore[arg-type]


def test_a_full_ring_refuses_until_the_reader_catches_up(
    ring_pair: tuple[AudioRing, AudioRing],
) -> None:
    producer, consumer = ring_pair
    first = producer.write(np.zeros(600, dtype=np.float32))  # 2400 bytes
    assert first is not None
    assert producer.write(np.zeros(600, dtype=np.float32)) is None  # 2400 more do not fit
    assert producer.write(np.zeros(2000, dtype=np.float32)) is None  # nor does anything > cap
    consumer.read(first)
    assert producer.write(np.zeros(600, dtype=np.float32)) is not None


def test_a_job_message_carries_no_samples_unless_the_ring_is_full(
    ring_pair: tuple[AudioRing, AudioRing],
) -> None:
    producer, consumer = ring_pair
    original = job(samples=500)
    message = JobMessage.of(original, producer)
    assert message.audio is None and message.slot is not None
    copy = message.to_job(consumer)
    assert (copy.id, copy.session, copy.kind, copy.end) == (original.id, "s1", "final", 500)
    np.testing.assert_array_equal(copy.audio, original.audio)
    big = job(samples=2000)  # 8000 bytes: more than the ring holds
    inline = JobMessage.of(big, producer)
    assert inline.slot is None and inline.audio is big.audio
    np.testing.assert_array_equal(inline.to_job(consumer).audio, big.audio)


def test_merged_status_is_healthy_only_when_every_model_process_is() -> None:
    a, b = WorkerStats(jobs_done=3, held_bytes=10), WorkerStats(jobs_done=4, held_bytes=5)
    a.batch_size.observe(2)
    b.batch_size.observe(8)
    up = WorkerStatus(True, True, 2, True, a)
    merged = merged_status([up, WorkerStatus(True, True, 1, True, b)])
    assert (merged.healthy, merged.queue_depth, merged.admits_sessions) == (True, 3, True)
    assert (merged.stats.jobs_done, merged.stats.held_bytes) == (7, 15)
    assert merged.stats.batch_size.count == 2 and merged.stats.batch_size.total == 10
    assert not merged_status([up, WorkerStatus(False, True, 0, False, b)]).healthy
    assert not merged_status([up, WorkerStatus(True, True, 0, False, b)]).admits_sessions
    assert not merged_status([]).healthy


# -- options --------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_workers_default_to_one_on_cpu_and_by_cores_on_gpus() -> None:
    assert default_workers(("cpu",), 64) == 1
    assert default_workers(("cuda",), 16) == MAX_DEFAULT_WORKERS
    assert default_workers(("cuda:0", "cuda:1"), 6) == 4
    assert default_workers(("cuda",), 1) == 1
    config = config_from_args(parse())
    assert (config.workers, config.multiprocess, config.model_devices) == (1, False, ("cpu",))
    config = config_from_args(parse("--workers", "3", "--devices", "cpu,cpu"))
    assert (config.workers, config.multiprocess, config.model_devices) == (3, True, ("cpu", "cpu"))
    assert config_from_args(parse("--devices", "cuda:0,cuda:1")).multiprocess


@pytest.mark.parametrize("bad", ["gpu", "cuda:0,", "cpu,,cpu"])
def test_devices_are_checked(bad: str) -> None:
    with pytest.raises(SystemExit):
        parse("--devices", bad)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- the proxy against a model process played here ------------------------------------------------


def test_the_proxy_sends_jobs_by_ring_and_routes_results_evictions_and_status(
    ring_pair: tuple[AudioRing, AudioRing], tmp_path: object
) -> None:
    producer, consumer = ring_pair
    address = os.path.join(str(tmp_path), "model.sock")
    key = os.urandom(16)
    listener = Listener(address, family="AF_UNIX", authkey=key)
    results: list[tuple[Job, JobResult]] = []
    evicted: list[list[str]] = []
    delivered = threading.Event()

    def on_result(done: Job, result: JobResult) -> None:
        results.append((done, result))
        delivered.set()

    proxy = WorkerProxy([(address, key, producer)], on_result, lambda s: evicted.append(list(s)))
    assert not proxy.alive  # not started
    connecting = threading.Thread(target=proxy.start)
    connecting.start()
    model_side = listener.accept()
    connecting.join()
    assert model_side.recv() == Hello(producer.name, os.getpid())
    assert proxy.alive and not proxy.healthy()  # no status yet

    model_side.send(StatusMessage(WorkerStatus(True, True, 7, False, WorkerStats(jobs_done=9))))
    sent = job(samples=300)
    assert proxy.submit(sent) == []
    message = model_side.recv()
    assert isinstance(message, JobMessage) and message.audio is None
    np.testing.assert_array_equal(message.to_job(consumer).audio, sent.audio)
    assert eventually(proxy.healthy)  # once the reader thread has taken the status in
    assert proxy.queue_depth == 7 and not proxy.admits_sessions
    assert proxy.stats_snapshot().jobs_done == 9

    model_side.send(ResultMessage(sent.id, JobResult(tokens=[1, 2, 3])))
    assert delivered.wait(10)
    assert results[0][0] is sent and results[0][1].tokens == [1, 2, 3]  # the very Job object
    model_side.send(ResultMessage(12345, JobResult(tokens=[])))  # unknown: dropped
    model_side.send(EvictedMessage(("s1", "s9")))
    proxy.cancel(sent)
    assert model_side.recv() == CancelMessage(sent.id)
    assert eventually(lambda: evicted == [["s1", "s9"]])  # after the unknown result
    assert len(results) == 1

    model_side.close()  # the model process has gone
    proxy.stop(timeout=10)
    assert not proxy.alive and not proxy.healthy()
    listener.close()


def test_with_two_model_processes_a_session_keeps_one_and_each_link_has_its_own_ring(
    tmp_path: object,
) -> None:
    memories = [create_ring_memory(1 << 16) for _ in range(2)]
    rings = [AudioRing.attach(m.name) for m in memories]
    key = os.urandom(16)
    listeners = [
        Listener(os.path.join(str(tmp_path), f"model-{i}.sock"), family="AF_UNIX", authkey=key)
        for i in range(2)
    ]
    addresses = [str(listener.address) for listener in listeners]
    links = [(address, key, ring) for address, ring in zip(addresses, rings, strict=True)]
    proxy = WorkerProxy(links, lambda *_: None, lambda _: None)
    connecting = threading.Thread(target=proxy.start)
    connecting.start()
    model_sides = [listener.accept() for listener in listeners]
    connecting.join()
    assert [side.recv().ring for side in model_sides] == [m.name for m in memories]
    sessions = [f"session-{i}" for i in range(12)]
    for _ in range(2):
        for session in sessions:
            proxy.submit(job(session))
    received: dict[int, list[str]] = {0: [], 1: []}
    readers = [AudioRing.attach(m.name) for m in memories]
    for i, side in enumerate(model_sides):
        while side.poll(0.5):
            message = side.recv()
            if isinstance(message, JobMessage):
                # Read from this link's own ring: the other link's reads do not free it.
                np.testing.assert_array_equal(
                    message.to_job(readers[i]).audio,
                    job(message.session).audio,
                )
                received[i].append(message.session)
    assert received[0] and received[1]  # both used
    assert not set(received[0]) & set(received[1])  # a session stays on one
    assert sorted(received[0] + received[1]) == sorted(sessions * 2)
    proxy.stop(timeout=10)
    for side, listener, ring, reader, memory in zip(
        model_sides, listeners, rings, readers, memories, strict=True
    ):
        side.close()
        listener.close()
        ring.close()
        reader.close()
        memory.close()
        memory.unlink()


def test_server_metrics_copy_and_merge_cover_every_count() -> None:
    """A count added to ServerMetrics but not to merge() would vanish from multi-process
    /metrics: every attribute must survive a copy, and double on merging with itself."""
    metrics = ServerMetrics()
    for name, value in vars(metrics).items():
        if isinstance(value, (int, float)):
            setattr(metrics, name, 3)
        elif isinstance(value, Counter):
            value["x"] = 3
        elif isinstance(value, Histogram):
            value.observe(3)
        else:
            raise AssertionError(f"ServerMetrics.{name}: a kind merge() does not know")
    copy = metrics.copy()
    copy.merge(metrics)
    for name, value in vars(copy).items():
        if isinstance(value, Histogram):
            assert (value.count, value.total) == (2, 6), name
        elif isinstance(value, Counter):
            assert value == Counter(x=6), name
        else:
            assert value == 6, name


def test_the_metrics_board_adds_up_processes_and_keeps_the_counts_of_gone_ones() -> None:
    def counts(sessions: int, segments: int) -> ServerMetrics:
        metrics = ServerMetrics()
        metrics.sessions_total, metrics.segments_out = sessions, segments
        metrics.endpoint_latency_ms.observe(10)
        return metrics

    board = MetricsBoard()
    board.update(MetricsMessage(1, counts(2, 5), 2))
    board.update(MetricsMessage(2, counts(3, 7), 1))
    board.update(MetricsMessage(1, counts(4, 9), 3))  # a newer snapshot replaces the older
    total = board.total()
    assert (total.metrics.sessions_total, total.metrics.segments_out) == (7, 16)
    assert (total.open_sessions, total.processes, total.metrics.endpoint_latency_ms.count) == (
        4,
        2,
        2,
    )
    board.retire(2)  # killed: its sessions are closed, its counts stay
    total = board.total()
    assert (total.metrics.sessions_total, total.open_sessions, total.processes) == (7, 3, 1)


def answer(admits: bool, capacity: float = 10.0, finals: float = 7.0) -> Admission:
    return Admission(admits, None if admits else 2000, capacity, finals, 1.0, 1.0, 0.8)


def test_the_proxy_admits_on_the_model_process_answer_and_counts_its_newcomers(
    ring_pair: tuple[AudioRing, AudioRing], tmp_path: object
) -> None:
    producer, _ = ring_pair
    address = os.path.join(str(tmp_path), "model.sock")
    key = os.urandom(16)
    listener = Listener(address, family="AF_UNIX", authkey=key)
    proxy = WorkerProxy([(address, key, producer)], lambda *_: None, lambda _: None)
    connecting = threading.Thread(target=proxy.start)
    connecting.start()
    model_side = listener.accept()
    connecting.join()
    model_side.recv()  # Hello
    assert proxy.admit("early").admits  # nothing measured yet: admitted, as in-process
    assert model_side.recv() == AdmitMessage("early")

    # Room for one more (7 + 1 <= 0.8 x 10), not two: the second handshake before the next
    # push is refused on the cached answer with the first newcomer counted.
    status = WorkerStatus(True, True, 0, True, WorkerStats(), admission=answer(True))
    model_side.send(StatusMessage(status))
    assert eventually(lambda: proxy.admission().capacity == 10.0)
    assert proxy.admit("a").admits
    assert model_side.recv() == AdmitMessage("a")
    refused = proxy.admit("b")
    assert not refused.admits and refused.retry_after_ms and proxy.admission().saturated
    proxy.session_closed("a")
    assert model_side.recv() == SessionClosedMessage("a")  # "b" was never counted there

    model_side.send(StatusMessage(replace(status, admission=answer(False, finals=9.0))))
    assert eventually(lambda: proxy.admission().demand_finals == 9.0)
    assert not proxy.admit("c").admits
    model_side.close()
    proxy.stop(timeout=10)
    listener.close()


def test_merged_admission_sums_capacity_and_demand_and_admits_while_any_does() -> None:
    one, two = answer(True, 10.0, 7.0), answer(False, 5.0, 5.0)
    merged = merged_admission([one, two])
    assert merged is not None and merged.admits and merged.retry_after_ms is None
    assert (merged.capacity, merged.demand_finals) == (15.0, 12.0)
    refused = merged_admission([two, replace(two, retry_after_ms=900)])
    assert refused is not None and not refused.admits and refused.retry_after_ms == 900
    assert merged_admission([]) is None and merged_admission([one]) is one
