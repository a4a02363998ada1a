"""`tandem serve` as a real process over the FakeEngine (``python -m tests.e2e.fake_serve``, the
serve command with the test engine loader): kill -9 loses no acknowledged event, a restart
replays the log, SIGTERM drains in-flight requests."""

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tests.conftest import ROOT, Server
from tests.server.fake_engine import write_fake_bundle


class Proc(Server):
    """`tandem serve` over the FakeEngine, with stubs; ``close`` kills it (no drain)."""

    COMMAND = ("-m", "tests.e2e.fake_serve")

    def __init__(self, bundles: Path, log: Path, *extra: str) -> None:
        super().__init__(bundles, *extra, log=log)
        self.channel = grpc.insecure_channel(self.addr)
        self.tandem = pb_grpc.TandemStub(self.channel)
        self.admin = pb_grpc.TandemAdminStub(self.channel)

    def wait_serving(self) -> None:
        self.wait_ready(timeout=30.0)

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.close()


def test_kill9_loses_no_acknowledged_event_and_restart_replays(tmp_path, procs):
    bundles, log = tmp_path / "bundles", tmp_path / "events.sqlite3"
    write_fake_bundle(bundles)
    server = Proc(bundles, tmp_path / "server.log", "--event-log", str(log))
    procs.append(server)
    server.wait_serving()
    acked: list[str] = []
    lock = threading.Lock()
    t_end = time.monotonic() + 6

    def writer(w: int) -> None:
        for n in range(2000):  # bounded in count and time
            if time.monotonic() > t_end:
                return
            user = f"k9-{w}-{n}"
            try:
                server.tandem.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id="i01")]),
                                           timeout=5)
            except grpc.RpcError:
                return  # the server is gone
            with lock:
                acked.append(user)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 5
    while len(acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    for th in threads:
        th.join(10)
    assert len(acked) >= 50
    with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:  # the documented schema, read directly
        logged = {u for (u,) in conn.execute("SELECT user_id FROM events")}
        seqs = [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY rowid")]
    assert set(acked) <= logged and seqs == sorted(set(seqs))

    again = Proc(bundles, tmp_path / "server.log", "--event-log", str(log))
    procs.append(again)
    again.wait_serving()
    status = again.admin.GetStatus(pb.GetStatusRequest(), timeout=5)
    assert status.event_log_sequence == len(seqs) and status.users == 2 + len(logged)
    for user in (acked[0], acked[-1]):
        r = again.tandem.Recommend(pb.RecommendRequest(user_id=user, k=1), timeout=5)
        assert not r.cold_start and r.items[0].item_id == "i02"  # the replayed event drives the answer
    ack = again.tandem.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="after", item_id="i05")]))
    assert ack.last_sequence == len(seqs) + 1


def test_sigterm_drains_in_flight_requests_and_closes_the_log(tmp_path, procs):
    bundles = tmp_path / "bundles"
    write_fake_bundle(bundles)
    server = Proc(bundles, tmp_path / "server.log", "--grace", "10")
    procs.append(server)
    server.wait_serving()
    server.tandem.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i01")]), timeout=5)
    result = {}

    def slow():
        try:
            r = server.tandem.Search(pb.SearchRequest(query="sleep 1.0 red", k=2), timeout=20)
            result["items"] = [it.item_id for it in r.items]
        except grpc.RpcError as exc:
            result["error"] = exc.code().name

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.4)
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    th.join(10)
    assert result == {"items": ["i00", "i04"]} and time.monotonic() - t0 >= 0.4
    wal = bundles / "events.sqlite3-wal"  # default event log; checkpointed and closed on the way out
    assert (bundles / "events.sqlite3").is_file() and (not wal.exists() or wal.stat().st_size == 0)
    text = Path(server.log.name).read_text()
    assert '"msg": "stopped"' in text and '"rpc": "Search", "request_id": "", "status": "OK"' in text


def test_missing_bundle_exits_with_a_message_and_there_is_no_engine_hook(tmp_path):
    def serve(*extra):
        return subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(tmp_path), "--port", "0",
                               *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)

    r = serve("--engine-loader", "tests.server.fake_engine:load_fake_engine")
    assert r.returncode == 2 and "unrecognized arguments: --engine-loader" in r.stderr
    r = serve()
    assert r.returncode == 2 and "no usable bundle" in r.stderr and "tandem build" in r.stderr
