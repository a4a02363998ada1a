"""``make demo``: the whole job on the embedded default (the synthetic shop), end to end.

generate -> clean (report) -> popularity baseline -> build a bundle (with evaluation) ->
serve -> search, recommend, record a purchase, recommend again -> stop the server.
Every step runs the real ``tandem`` command, so what the demo shows is what users get.

With ``--search-only`` the shop's events file is removed after generating (a shop with items and
graded queries only): clean -> build a search-only bundle -> serve -> search, get an item, similar
items, a Recommend that the bundle refuses (FAILED_PRECONDITION: no behaviour to recommend from), a
recorded view, and a Recommend from that history -> stop the server.

Each step's own output (stdout and stderr, and the server's log) is shown as it runs. When a
step fails, the demo says which step, prints the exact command and the command's own error
output (and the server's log tail once the server was started), and exits with status 1.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

__all__ = ["main", "build_parser", "StepFailed", "ServerProcess", "run_step"]

#: lines of a failing command's error output, and of the server's log, shown on failure
TAIL_LINES = 30


class StepFailed(Exception):
    """A demo step that did not do its job: what was run and what it said."""

    def __init__(self, step: str, command: list[str], reason: str, output: str = "",
                 env: dict[str, str] | None = None, label: str = "its error output") -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.command, self.reason, self.output, self.env = step, command, reason, output, env or {}
        self.label = label
        #: more to show after the command's output (the server's log tail)
        self.notes: list[str] = []

    def report(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        lines = [f"\ndemo failed at step {self.step!r}: {self.reason}",
                 f"  command: {env + ' ' if env else ''}{shlex.join(self.command)}"]
        tail = _tail(self.output)
        if tail:
            lines.append(f"  {self.label} (last {len(tail)} lines):")
            lines += [f"    {line}" for line in tail]
        else:
            lines.append(f"  {self.label}: (none)")
        return "\n".join(lines + self.notes)


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    # a progress bar redraws with '\r': keep only the last state of each line
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in lines if line][-n:]


def _pump(src: IO[bytes], sinks: list[tuple[IO[str], str]], keep: list[str], *, lines: bool = False
          ) -> threading.Thread:
    """Copy ``src`` to every ``(sink, prefix)`` as it arrives (decoded as UTF-8) and into ``keep``:
    line by line when ``lines`` (each line gets the sink's prefix), otherwise chunk by chunk (a
    progress bar keeps its carriage returns)."""

    def run() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        read = src.readline if lines else (lambda: os.read(src.fileno(), 65536))
        while True:
            chunk = read()
            if not chunk:
                break
            text = decoder.decode(chunk)
            keep.append(text)
            for sink, prefix in sinks:
                sink.write(prefix + text)
                sink.flush()
        src.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # unbuffered: a step's prints reach the terminal as they happen, not when the pipe's buffer fills
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def run_step(step: str, cmd: list[str], *, env: dict[str, str] | None = None,
             timeout: float | None = None) -> str:
    """Run one command, showing its stdout and stderr as they come; return its stdout.

    Raises :class:`StepFailed` (with the command's own stderr) on a non-zero exit status, or when
    it is still running after ``timeout`` seconds (it is killed then)."""
    env = env or {}
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    print(f"\n== {step}\n$ {shown + ' ' if shown else ''}{shlex.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(env))
    out: list[str] = []
    err: list[str] = []
    pumps = [_pump(proc.stdout, [(sys.stdout, "")], out), _pump(proc.stderr, [(sys.stderr, "")], err)]
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for p in pumps:
            p.join()
        raise StepFailed(step, cmd, f"still running after {timeout:.0f} s, stopped", "".join(err), env) from None
    except BaseException:  # Ctrl-C or SIGTERM: no step outlives the demo
        proc.kill()
        proc.wait()
        raise
    for p in pumps:
        p.join()
    if status != 0:
        raise StepFailed(step, cmd, f"exit status {status}", "".join(err), env)
    return "".join(out)


def _run_json(step: str, cmd: list[str], *, timeout: float | None) -> dict:
    out = run_step(step, cmd, timeout=timeout)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise StepFailed(step, cmd, "exit status 0 but no JSON answer on stdout", out) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tandem serve`` in the background; its output goes to ``log`` and to the terminal."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.cmd, self.port, self.log_path = cmd, port, log
        print(f"\n== serve\n$ {shlex.join(cmd)} &    (log: {log})", flush=True)
        self._log = open(log, "w")
        self.lines: list[str] = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env({}))
        self._pump = _pump(self.proc.stdout, [(self._log, ""), (sys.stdout, "  server | ")], self.lines,
                           lines=True)

    def tail(self) -> str:
        status = self.proc.poll()
        head = (f"  the server exited with status {status}" if status is not None else "  the server is running")
        lines = _tail("".join(self.lines))
        return "\n".join([f"{head}; its log ({self.log_path}), last {len(lines)} lines:",
                          *[f"    {line}" for line in lines]])

    def wait_serving(self, timeout: float) -> None:
        """Until the health service reports SERVING; StepFailed if the server exits or it takes
        longer than ``timeout`` seconds."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        start = time.monotonic()
        said = start
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise StepFailed("serve", self.cmd,
                                     f"the server exited with status {self.proc.returncode} before it reported "
                                     "SERVING", "".join(self.lines), label="its log")
                waited = time.monotonic() - start
                if waited > timeout:
                    raise StepFailed("serve", self.cmd, f"the server did not report SERVING within {timeout:.0f} s "
                                     "(raise --ready-timeout on a slow machine)", "".join(self.lines), label="its log")
                if time.monotonic() - said >= 30:
                    print(f"  ... waiting for the server to report SERVING ({waited:.0f} s)", flush=True)
                    said = time.monotonic()
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        print(f"  the server reports SERVING after {waited:.0f} s", flush=True)
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout=10)
        self._log.close()


def _pick_user(data: Path, report: Path, min_events: int = 10) -> str:
    """The first user (in file order) that cleaning kept and that has at least ``min_events``
    events: an id the bundle knows, with a history worth recommending from."""
    bots = {b["user_id"] for b in json.loads(report.read_text())["bot_users"]}
    counts: Counter[str] = Counter()
    with gzip.open(data / "events.jsonl.gz", "rt") as f:
        for line in f:
            user = json.loads(line).get("user_id")
            if user and user not in bots:
                counts[user] += 1
                if counts[user] >= min_events:
                    return user
    if not counts:
        raise ValueError(f"{data / 'events.jsonl.gz'}: no events of a user that cleaning kept")
    return counts.most_common(1)[0][0]


def _first_query(data: Path) -> tuple[str, str]:
    """The first graded query and its best-graded item."""
    best: tuple[int, str] | None = None
    query = None
    with gzip.open(data / "queries.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            if query is None:
                query = row["query"]
            elif row["query"] != query:
                break
            if best is None or row["grade"] > best[0]:
                best = (row["grade"], row["item_id"])
    if query is None or best is None:
        raise ValueError(f"{data / 'queries.jsonl.gz'}: no queries")
    return query, best[1]


def _titles(result: dict) -> list[str]:
    return [f"{it['item_id']} {it.get('title', '')[:50]} ({it['score']:.3f})" for it in result["items"]]


def _ids(result: dict) -> list[str]:
    return [it["item_id"] for it in result["items"]]


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name}: expected a number > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tandem.server.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything (emptied first)")
    p.add_argument("--items", type=_positive(int, "--items"), default=500, help="catalog size (default 500)")
    p.add_argument("--users", type=_positive(int, "--users"), default=400, help="shoppers (default 400)")
    p.add_argument("--queries", type=_positive(int, "--queries"), default=100,
                   help="graded search queries; half train the search ranker (default 100)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML build config passed to `tandem build`")
    p.add_argument("--search-only", action="store_true",
                   help="remove the generated events: build and serve a search-only shop (items and queries)")
    p.add_argument("--rpc-timeout", type=_positive(float, "--rpc-timeout"), default=120.0, metavar="SECONDS",
                   help="deadline of each client call (default 120: a busy machine is slow, not broken)")
    p.add_argument("--ready-timeout", type=_positive(float, "--ready-timeout"), default=600.0, metavar="SECONDS",
                   help="how long the server may take to report SERVING (default 600)")
    return p


#: written into --out, so that a later demo may empty that folder again
MARKER = ".tandem-demo"


def _prepare(out: Path) -> None:
    """Empty ``out`` for a new run, but only a folder an earlier demo wrote (or an empty one)."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a folder")
        earlier = (out / MARKER).is_file() or (out / "shop" / "truth.json").is_file()
        if not earlier and any(out.iterdir()):
            raise ValueError(f"--out {out}: the folder holds files the demo did not write and the demo empties "
                             "its folder first; remove it or pick another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by python -m tandem.server.demo; the next demo run empties this folder\n")


def _demo(args: argparse.Namespace) -> None:
    out: Path = args.out
    _prepare(out)
    data, bundles, report = out / "shop", out / "bundles", out / "cleaning_report.json"
    tandem = [sys.executable, "-m", "tandem.server.cli"]
    # One thread each for torch, OpenBLAS and OpenMP in the offline steps (`tandem serve` pins
    # itself). Most of a build is request-sized work (ranker lists, evaluation, query encoding),
    # where a second spinning thread only waits; on a busy 2-core machine two threads made one
    # query encoding ~15x slower in wall time (docs: benchmarks/README.md, "make demo").
    offline = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # The demo's two-tower model trains for at most 45 s (early stopping may end it sooner;
    # `tandem build` itself has no such budget). It keeps the demo to minutes on a busy machine,
    # at the price of weights that depend on the machine's speed when the budget ends training.
    offline["TANDEM_BUILD__TWO_TOWER__TIME_BUDGET_S"] = os.environ.get("TANDEM_BUILD__TWO_TOWER__TIME_BUDGET_S", "45")
    # a client call's own deadline ends it; this only catches a client that hangs before its call
    client_wait = args.rpc_timeout + 120

    run_step("generate", [*tandem, "generate", "--out", str(data), "--items", str(args.items),
                          "--users", str(args.users), "--queries", str(args.queries), "--seed", str(args.seed)],
             env=offline)
    if args.search_only:
        (data / "events.jsonl.gz").unlink()
        print(f"\n--search-only: removed {data / 'events.jsonl.gz'}; the shop has items and graded queries only",
              flush=True)
    run_step("clean", [*tandem, "clean", "--data", str(data), "--report", str(report)], env=offline)
    if not args.search_only:  # popularity needs events
        run_step("popularity baseline", [*tandem, "eval", "--data", str(data), "--json",
                                         str(out / "popularity.json")], env=offline)
    build = [*tandem, "build", "--data", str(data), "--out", str(bundles), "--split", "leave-last-out"]
    run_step("build", build + (["--config", str(args.config)] if args.config else []), env=offline)

    query, graded_best = _first_query(data)
    port = _free_port()
    addr = f"127.0.0.1:{port}"
    server = ServerProcess([*tandem, "serve", "--bundles", str(bundles), "--port", str(port)], port,
                           out / "server.log")
    try:
        server.wait_serving(args.ready_timeout)
        client = ["--addr", addr, "--timeout", f"{args.rpc_timeout:g}"]
        if args.search_only:
            _search_only_calls(tandem, client, query, graded_best, client_wait)
        else:
            _calls(tandem, client, _pick_user(data, report), query, graded_best, client_wait)
    except BaseException as exc:
        server.stop()
        if isinstance(exc, StepFailed):
            exc.notes.append(server.tail())
        else:
            print(server.tail(), file=sys.stderr)
        raise
    server.stop()


def _search(tandem: list[str], client: list[str], query: str, graded_best: str, client_wait: float) -> None:
    found = _run_json("search", [*tandem, "search", *client, "--query", query, "--k", "5", "--json"],
                      timeout=client_wait)
    print(f"\nsearch {query!r}:\n  " + "\n  ".join(_titles(found)))
    print(f"  its best-graded item {graded_best} is "
          + (f"at rank {_ids(found).index(graded_best) + 1}" if graded_best in _ids(found) else "not in the top 5"))


def _search_only_calls(tandem: list[str], client: list[str], query: str, graded_best: str,
                       client_wait: float) -> None:
    """What a search-only bundle answers: Search, GetItem, SimilarItems (text), and Recommend only
    from a history."""
    _search(tandem, client, query, graded_best, client_wait)
    run_step("get-item", [*tandem, "get-item", *client, "--item", graded_best], timeout=client_wait)
    similar = _run_json("similar", [*tandem, "similar", *client, "--item", graded_best, "--k", "5", "--json"],
                        timeout=client_wait)
    print(f"\nsimilar to {graded_best}:\n  " + "\n  ".join(_titles(similar)))
    user = "demo-shopper"
    rec = [*tandem, "recommend", *client, "--user", user, "--k", "5", "--json"]
    try:
        run_step("recommend (refused)", rec, timeout=client_wait)
    except StepFailed as exc:
        if "FAILED_PRECONDITION: search-only bundle" not in exc.output:
            raise
        print(f"\nrecommend for {user} (no history) is refused, as documented:\n  {exc.output.strip()}")
    else:
        raise StepFailed("recommend (refused)", rec, "a search-only bundle answered Recommend for a user "
                         "without history; it must refuse with FAILED_PRECONDITION")
    run_step("record", [*tandem, "record", *client, "--user", user, "--item", graded_best, "--event", "view"],
             timeout=client_wait)
    after = _run_json("recommend from history", rec, timeout=client_wait)
    if not after["items"]:
        raise StepFailed("recommend from history", rec, "no items for a user with a recorded view",
                         json.dumps(after))
    print(f"\nrecommend for {user} after viewing {graded_best} (text similarity to the history):\n  "
          + "\n  ".join(_titles(after)))


def _calls(tandem: list[str], client: list[str], user: str, query: str, graded_best: str,
           client_wait: float) -> None:
    """Search, then Recommend before and after a recorded purchase."""
    _search(tandem, client, query, graded_best, client_wait)
    rec = [*tandem, "recommend", *client, "--user", user, "--k", "5", "--json"]
    before = _run_json("recommend", rec, timeout=client_wait)
    if before.get("cold_start") or not before["items"]:
        raise StepFailed("recommend", rec, f"the bundle does not know user {user} (a cold-start answer)",
                         json.dumps(before))
    print(f"\nrecommend for {user}:\n  " + "\n  ".join(_titles(before)))
    bought = before["items"][0]["item_id"]
    run_step("record", [*tandem, "record", *client, "--user", user, "--item", bought, "--event", "purchase"],
             timeout=client_wait)
    after = _run_json("recommend again", rec, timeout=client_wait)
    print(f"\nrecommend for {user} after buying {bought}:\n  " + "\n  ".join(_titles(after)))
    if _ids(before) == _ids(after):
        raise StepFailed("recommend again", rec, f"the purchase of {bought} did not change the next "
                         "recommendation (a recorded event must change the very next answer)", json.dumps(after))
    print(f"\nthe purchase changed the next recommendation; {bought} is "
          f"{'still' if bought in _ids(after) else 'no longer'} recommended")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the running step and the server, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _demo(args)
    except StepFailed as exc:
        print(exc.report(), file=sys.stderr)
        print(f"\ndemo FAILED after {time.perf_counter() - t0:.0f} s; what it wrote is under {args.out}/",
              file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:  # the demo's own files: --out, the shop it reads ids from
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ndemo stopped after {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
