"""Authenticated sites that stall, answer late, replay, or open sessions they never use
cannot starve the honest ones: real gRPC on loopback, the coordinator's runtime in this
process, raw sites that send what they like.

Regression tests for issue "Hardening", failures 3, 4 and 5."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from fedtune.runtime.grpc.security import make_certificates
from fedtune.runtime.grpc.transfer import control_chunk, message_chunks, open_session
from fedtune.types import FitRes, NodeFailure

from .deployment import RawSite, fit_in_background, make_runtime

BIG = 2**19  # float32 values: 2 MiB, above the upload gate's small-message threshold


def runtime_for(**settings):
    return make_runtime(expected_bytes=3 * 4 * BIG, **settings)


def result_chunks(site, task_id, round_, numel=BIG):
    res = FitRes(site, round_, torch.full((numel,), 0.5), 5, 1, 0.5)
    return list(message_chunks("result", res, task_id=task_id, round_=round_,
                               chunk_bytes=2**18, site=site))


def fit(runtime, sites, round_, numel=BIG):
    return fit_in_background(runtime, sites, round_, numel)


def joined(runtime, address, *names):
    sites = {n: RawSite(address, n) for n in names}
    for site in sites.values():
        assert site.next_message().kind == "welcome"
    runtime.wait_for_nodes(len(names))
    return sites


def collect(replies, count, timeout=30):
    """Site -> (kind of result, round), dropping each reply as the coordinator does (a
    received update holds its upload slot until it is dropped)."""
    got = {}
    for _ in range(count):
        reply = replies.get(timeout=timeout)
        got[reply.result.node_id] = (type(reply.result), reply.result.round)
        del reply
    return got


def test_a_late_upload_frees_the_only_slot_at_once():
    """With server.max_concurrent_uploads = 1, a site that answers a round late must not
    hold the slot the others need in the next round."""
    runtime, address = runtime_for(max_concurrent_uploads=1, round_deadline_s=4)
    sites = joined(runtime, address, "a", "b")
    try:
        replies = fit(runtime, ["a", "b"], 1)
        late_task = sites["a"].next_message()  # a keeps quiet this round
        task_b = sites["b"].next_message()
        for chunk in result_chunks("b", task_b.task_id, 1):
            sites["b"].outbox.put(chunk)
        got = collect(replies, 2)
        assert got == {"a": (NodeFailure, 1), "b": (FitRes, 1)}
        replies = fit(runtime, ["a", "b"], 2)
        task_a, task_b = sites["a"].next_message(), sites["b"].next_message()
        for chunk in result_chunks("a", late_task.task_id, 1):  # round 1's answer, now
            sites["a"].outbox.put(chunk)
        for site, task in (("b", task_b), ("a", task_a)):
            for chunk in result_chunks(site, task.task_id, 2):
                sites[site].outbox.put(chunk)
        got = collect(replies, 2)
        assert got == {"a": (FitRes, 2), "b": (FitRes, 2)}
    finally:
        for site in sites.values():
            site.close()
        runtime.close()


def test_a_stalled_upload_loses_its_slot_and_a_silent_first_site_blocks_nobody():
    runtime, address = runtime_for(max_concurrent_uploads=1, upload_idle_s=1,
                                    round_deadline_s=25)
    sites = joined(runtime, address, "a", "b", "c")
    try:
        replies = fit(runtime, ["a", "b", "c"], 1)
        tasks = {n: s.next_message() for n, s in sites.items()}
        # a, first in the order, never answers; b sends one chunk of its upload and stalls
        sites["b"].outbox.put(result_chunks("b", tasks["b"].task_id, 1)[0])
        time.sleep(0.3)
        for chunk in result_chunks("c", tasks["c"].task_id, 1):
            sites["c"].outbox.put(chunk)
        first = replies.get(timeout=20)
        # c got in before the round's deadline (a's failure, below, comes after both);
        # the stalled b lost its session
        second = replies.get(timeout=20)
        by_site = {r.result.node_id: r for r in (first, second)}
        assert isinstance(by_site["c"].result, FitRes), by_site
        assert isinstance(by_site["b"].result, NodeFailure)
        third = replies.get(timeout=30)  # a, at the deadline
        assert third.result.node_id == "a" and isinstance(third.result, NodeFailure)
    finally:
        for site in sites.values():
            site.close()
        runtime.close()


def test_replayed_late_results_are_kept_once_per_task_asked():
    runtime, address = runtime_for(stragglers="stale", round_deadline_s=1)
    sites = joined(runtime, address, "a")
    try:
        replies = fit(runtime, ["a"], 1, numel=10)
        task = sites["a"].next_message()
        assert isinstance(replies.get(timeout=10).result, NodeFailure)  # missed the deadline
        chunks = result_chunks("a", task.task_id, 1, numel=10)
        for _ in range(200):  # the same late result, over and over
            for chunk in chunks:
                sites["a"].outbox.put(chunk)
        # and a result for a task never asked
        for chunk in result_chunks("a", 999, 1, numel=10):
            sites["a"].outbox.put(chunk)
        replies = fit(runtime, ["a"], 2, numel=10)  # the stream is read in order: once this
        task = sites["a"].next_message()            # round's answer is in, so are the replays
        for chunk in result_chunks("a", task.task_id, 2, numel=10):
            sites["a"].outbox.put(chunk)
        assert isinstance(replies.get(timeout=30).result, FitRes)
        late = runtime.take_late()
        assert len(late) == 1 and late[0][0].round == 1
        assert runtime.take_late() == []
    finally:
        for site in sites.values():
            site.close()
        runtime.close()


@pytest.fixture
def tokens(tmp_path):
    make_certificates(tmp_path, sites=["honest", "evil"], hosts=["127.0.0.1"])
    return tmp_path


def test_hundreds_of_idle_sessions_do_not_lock_out_an_honest_site(tokens):
    # the idle sessions wait far longer than the test: the honest site must get in while
    # they are still held open, not once they time out
    runtime, address = runtime_for(insecure_no_auth=False, tokens=str(tokens / "tokens.toml"),
                                    hello_timeout_s=300)
    evil_token = (tokens / "evil.token").read_text().strip()
    honest_token = (tokens / "honest.token").read_text().strip()
    channel = grpc.insecure_channel(address)
    stop = threading.Event()

    def silent():
        stop.wait()
        yield control_chunk("hello", site="evil")

    calls = [open_session(channel)(silent(), metadata=(("x-fedtune-site", "evil"),
                                                       ("x-fedtune-token", evil_token)))
             for _ in range(300)]
    pending = runtime.conn.pending
    try:
        for _ in range(600):  # until the evil site's streams are open and waiting
            if pending.by_site.get("evil", 0) >= pending.per_site:
                break
            time.sleep(0.05)
        assert pending.by_site.get("evil") == pending.per_site
        with grpc.insecure_channel(address) as honest:
            hello = iter([control_chunk("hello", site="honest")])
            answers = open_session(honest)(hello, metadata=(("x-fedtune-site", "honest"),
                                                             ("x-fedtune-token", honest_token)))
            first = next(answers)
            assert first.kind == "welcome"
            answers.cancel()
        # welcomed while the attacker still held its waiting sessions
        assert pending.by_site.get("evil") == pending.per_site
        stop.set()  # the held sessions say hello now; none is left waiting for its timeout
        # beyond the per-site cap the evil streams were refused at once
        refused = 0
        for call in calls:
            try:
                next(call)
            except grpc.RpcError as exc:
                refused += exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            except StopIteration:
                pass
        assert refused >= 300 - pending.per_site
    finally:
        stop.set()
        for call in calls:
            call.cancel()
        channel.close()
        runtime.close()
