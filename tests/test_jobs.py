"""The shared job runner (vichat.jobs.run_pool): lazy items, commits on the calling thread, stops."""

import threading
import time

import pytest

from vichat.jobs import OK, run_pool


def test_items_are_taken_lazily_a_bounded_distance_ahead_of_the_workers():
    concurrency, n = 2, 12
    done: list[int] = []
    produced_after: list[int] = []  # how many outcomes were committed when item k was produced
    committer: list[str] = []

    def items():
        for k in range(n):
            produced_after.append(len(done))
            yield k

    def work(k):
        time.sleep(0.01)
        return k * k

    def commit(outcome):
        assert outcome.kind == OK and outcome.payload == outcome.item ** 2
        committer.append(threading.current_thread().name)
        done.append(outcome.item)

    run_pool(items(), work, commit, concurrency=concurrency, stop=threading.Event())
    assert sorted(done) == list(range(n))
    assert set(committer) == {threading.current_thread().name}  # commits happen here only
    # At most `concurrency` items in the workers' hands and `concurrency` waiting: the rest of a
    # generator (the translator's protection and look-ups) runs while earlier requests are out.
    assert all(k - committed <= 2 * concurrency for k, committed in enumerate(produced_after))
    assert produced_after[-1] > 0


def test_an_error_while_preparing_items_stops_the_job_and_lands_what_is_in_flight():
    committed: list[int] = []
    started = threading.Event()

    def items():
        yield 0
        assert started.wait(10)
        raise RuntimeError("cannot read the next record")

    def work(k):
        started.set()
        time.sleep(0.05)
        return k

    with pytest.raises(RuntimeError, match="next record"):
        run_pool(items(), work, lambda o: committed.append(o.item), concurrency=4, stop=threading.Event(), grace=10)
    assert committed == [0]  # the request already sent was waited for and committed
    deadline = time.monotonic() + 10
    while any(t.name == "vichat-job" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "vichat-job" for t in threading.enumerate())


def test_no_items_starts_no_thread():
    before = threading.active_count()
    run_pool(iter(()), lambda x: x, lambda o: None, concurrency=8, stop=threading.Event())
    assert threading.active_count() == before
