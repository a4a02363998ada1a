"""`tandem serve --processes 2` as real processes: both share the port, an event recorded through
either changes the next Recommend of the other, a killed child is restarted (and replays the log),
SIGTERM on the parent stops every child; a child that cannot start fails the group; children of a
parent that died stop themselves.

SO_REUSEPORT lets the kernel pick the process of each connection, so the tests talk to each
process on its private port (printed by the parent: ``tandem process I ready: pid P, private port Q``)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tests.conftest import ROOT, free_port, stop_process
from tests.server.fake_engine import write_fake_bundle

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

READY = re.compile(r"^tandem process (\d+) ready: pid (\d+), private port (\d+)", re.M)


class Group:
    """`tandem serve --processes N` (the product CLI, or ``command``) with its output in ``log``."""

    def __init__(self, bundles: Path, log: Path, *extra: str, processes: int = 2,
                 command: tuple[str, ...] = ("-m", "tandem.server.cli", "serve")) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = log
        self.log = open(log, "a")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *command, "--bundles", str(bundles), "--port", str(self.port),
                                      "--processes", str(processes), *extra], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def members(self) -> dict[int, tuple[int, int]]:
        """index -> (pid, private port) of the latest ready report of each child."""
        return {int(i): (int(pid), int(port)) for i, pid, port in READY.findall(self.log_path.read_text())}

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            assert self.proc.poll() is None, f"the group exited with {self.proc.returncode}: see {self.log_path}"
            time.sleep(0.1)
        raise TimeoutError(f"{what} within {timeout}s; see {self.log_path}")

    def serving(self) -> bool:
        with grpc.insecure_channel(self.addr) as ch:
            try:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return False
        return status == health_pb2.HealthCheckResponse.SERVING

    def stop(self) -> int | None:
        return stop_process(self.proc, self.log)


def listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (from /proc/net/tcp and tcp6; state 0A is LISTEN)."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            n += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return n


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by the group's parent) is not alive either
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stubs(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.TandemStub(channel)


def _has_item(stub, item_id: str) -> bool:
    try:
        stub.GetItem(pb.GetItemRequest(item_id=item_id), timeout=10)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


def visible_within(stub, user: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10).cold_start:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise AssertionError(f"user {user}'s event was not visible within {timeout}s")


def test_two_processes_share_the_port_and_the_events_and_are_supervised(tiny_bundles, tmp_path):
    events = tmp_path / "events.sqlite3"  # not beside the shared session bundle
    group = Group(tiny_bundles, tmp_path / "group.log", "--event-log", str(events), "--grace", "2")
    channels = []
    try:
        group.wait(group.serving, 240, "the group SERVING")
        # SERVING on the shared port is the answer of the first ready process; the other may still be
        # loading (and each writes its ready line to the group log when it is)
        def both_ready() -> dict[int, tuple[int, int]] | None:
            found = group.members()
            return found if len(found) == 2 else None

        members = group.wait(both_ready, 240, "both processes ready")
        assert sorted(members) == [0, 1] and members[0][0] != members[1][0]
        assert listeners(group.port) == 2  # both processes accept on the shared port
        (ch0, s0), (ch1, s1) = stubs(members[0][1]), stubs(members[1][1])
        channels += [ch0, ch1]
        item = s0.Recommend(pb.RecommendRequest(k=1), timeout=10).items[0].item_id
        # recorded through process 0: process 1's next answers change (within the tail interval)
        for writer, reader, user in ((s0, s1, "xproc-a"), (s1, s0, "xproc-b")):
            assert reader.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10).cold_start
            writer.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=item)]), timeout=10)
            assert not writer.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10).cold_start
            assert visible_within(reader, user, 2.0) < 2.0
        # live catalog changes travel the same way: upserted through process 0, found by process 1;
        # deleted through process 1, gone from process 0
        new_item = pb.Item(item_id="xproc-item", title="Xylophone mallet brass polish", in_stock=True)
        pb_grpc.TandemAdminStub(ch0).UpsertItems(pb.UpsertItemsRequest(items=[new_item]), timeout=120)
        group.wait(lambda: _has_item(s1, "xproc-item"), 10, "the item upserted through process 0 on process 1")
        assert s1.Search(pb.SearchRequest(query=new_item.title, k=3), timeout=30).items[0].item_id == "xproc-item"
        pb_grpc.TandemAdminStub(ch1).DeleteItems(pb.DeleteItemsRequest(item_ids=["xproc-item"]), timeout=120)
        group.wait(lambda: not _has_item(s0, "xproc-item"), 10, "the item deleted through process 1 gone from process 0")

        # kill -9 one child: it is reported and restarted, and replays the log; the other serves on
        old_pid = members[1][0]
        os.kill(old_pid, signal.SIGKILL)
        assert not s0.Recommend(pb.RecommendRequest(user_id="xproc-b", k=5), timeout=10).cold_start
        fresh = group.wait(lambda: group.members().get(1, (old_pid,))[0] != old_pid and group.members()[1],
                           240, "process 1 restarted")
        assert "process exited; restarting it" in group.log_path.read_text()
        ch1b, s1b = stubs(fresh[1])
        channels.append(ch1b)
        assert not s1b.Recommend(pb.RecommendRequest(user_id="xproc-a", k=5), timeout=10).cold_start
        s1b.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="xproc-c", item_id=item)]), timeout=10)
        visible_within(s0, "xproc-c", 2.0)
        assert group.serving() and listeners(group.port) == 2

        # SIGTERM on the parent: every child drains and exits, then the parent, with 0
        pids = [pid for pid, _ in group.members().values()]
        assert group.stop() == 0
        assert not any(alive(pid) for pid in pids)
    finally:
        for ch in channels:
            ch.close()
        group.stop()


@pytest.fixture
def fake_bundles(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, event_log={"seq": 0})
    return root


def test_a_child_that_cannot_start_fails_the_group(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    group = Group(empty, tmp_path / "group.log", command=("-m", "tests.e2e.fake_serve"))
    try:
        assert group.proc.wait(120) == 2
    finally:
        group.stop()
    assert "before the group was ready" in group.log_path.read_text()


def test_children_of_a_parent_killed_with_sigkill_stop_themselves(fake_bundles, tmp_path):
    group = Group(fake_bundles, tmp_path / "group.log", "--grace", "1", command=("-m", "tests.e2e.fake_serve"))
    try:
        group.wait(group.serving, 120, "the group SERVING")
        pids = [pid for pid, _ in group.members().values()]
        group.proc.kill()
        group.proc.wait(10)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in pids)
    finally:
        group.stop()
