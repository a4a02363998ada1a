"""The demo's failure path: a failing step names itself, shows the exact command and that
command's own error output, and the demo exits non-zero without a Python traceback.
(The demo end to end: tests/e2e/test_demo.py.)"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tandem.server.demo import ServerProcess, StepFailed, build_parser, main, run_step
from tests.conftest import ROOT, free_port


def test_run_step_streams_output_and_returns_stdout(capsys):
    out = run_step("echo", [sys.executable, "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"])
    assert out == "to stdout\n"
    seen = capsys.readouterr()
    assert "== echo\n$ " in seen.out and "to stdout" in seen.out
    assert "to stderr" in seen.err


def test_a_failing_step_carries_the_command_and_its_own_stderr(capsys):
    cmd = [sys.executable, "-c", "import sys; print('half done'); print('disk full: /nowhere', file=sys.stderr); "
           "sys.exit(3)"]
    with pytest.raises(StepFailed) as info:
        run_step("write", cmd, env={"TANDEM_X": "1"})
    report = info.value.report()
    assert "step 'write': exit status 3" in report
    assert "TANDEM_X=1 " in report and "disk full: /nowhere" in report and "sys.exit(3)" in report
    shown = report.split("its error output (last 1 lines):")[1]
    assert shown.strip() == "disk full: /nowhere"  # stdout was shown as it ran; the report is the error output
    assert "disk full: /nowhere" in capsys.readouterr().err  # also shown as it happened


def test_a_step_past_its_timeout_is_stopped():
    with pytest.raises(StepFailed, match="still running after 1 s, stopped"):
        run_step("hang", [sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)


def test_the_demo_reports_a_failing_tandem_command_and_exits_non_zero(tmp_path, capsys):
    # a real `tandem generate` that refuses its arguments (the shop needs 81+ items)
    status = main(["--out", str(tmp_path / "demo"), "--items", "5", "--users", "5"])
    assert status == 1
    err = capsys.readouterr().err
    assert "demo failed at step 'generate': exit status 2" in err
    assert "-m tandem.server.cli generate --out" in err and "--items 5" in err
    assert "tandem generate: error: items:" in err  # the command's own message
    assert "Traceback" not in err and "CalledProcessError" not in err


def test_a_server_that_dies_before_serving_shows_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('loading the bundle'); print('bad bundle: checksum', flush=True); "
           "sys.exit(2)"]
    server = ServerProcess(cmd, free_port(), tmp_path / "server.log")
    try:
        with pytest.raises(StepFailed, match="exited with status 2 before it reported SERVING") as info:
            server.wait_serving(timeout=60)
    finally:
        server.stop()
    assert "bad bundle: checksum" in info.value.report()
    assert "bad bundle: checksum" in (tmp_path / "server.log").read_text()
    assert "exited with status 2" in server.tail() and "loading the bundle" in server.tail()


def test_a_server_that_never_serves_is_given_up_and_stopped(tmp_path):
    cmd = [sys.executable, "-c", "import time; print('warming up', flush=True); time.sleep(60)"]
    server = ServerProcess(cmd, free_port(), tmp_path / "server.log")
    try:
        with pytest.raises(StepFailed, match="did not report SERVING within 1 s") as info:
            server.wait_serving(timeout=1)
    finally:
        server.stop()
    assert "warming up" in info.value.report()
    assert server.proc.poll() is not None


@pytest.mark.parametrize("flag", ["--items", "--users", "--rpc-timeout", "--ready-timeout"])
def test_sizes_and_timeouts_must_be_positive(flag, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, "0"])
    assert f"{flag}: expected a number > 0, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_server_without_a_bundle_fails_the_demo_with_its_own_message(tmp_path):
    (tmp_path / "bundles").mkdir()
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "tandem.server.cli", "serve", "--bundles", str(tmp_path / "bundles"),
                            "--port", str(port)], port, tmp_path / "server.log")
    try:
        with pytest.raises(StepFailed) as info:
            server.wait_serving(timeout=300)
    finally:
        server.stop()
    report = info.value.report()
    assert "before it reported SERVING" in report
    assert "tandem serve: error: cannot serve: no usable bundle" in report


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in args:
            found.append(args)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_sigterm_stops_the_demo_and_the_step_it_runs(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.demo", "--out", str(out), "--items", "300",
                             "--users", "200", "--queries", "40"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("== build"):
                break
        time.sleep(1)
        assert any(" build --data " in p for p in _processes_mentioning(str(out)))
        proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "demo stopped after" in err and "Traceback" not in err
    assert _processes_mentioning(str(out)) == []


def test_the_demo_empties_only_a_folder_it_wrote(tmp_path, capsys):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["--out", str(mine)]) == 1
    assert "--out " + str(mine) + ": the folder holds files the demo did not write" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"
    # a folder of an earlier run is emptied (here the run fails at once, after emptying it)
    earlier = tmp_path / "demo"
    assert main(["--out", str(earlier), "--items", "5"]) == 1
    (earlier / "leftover.txt").write_text("from the earlier run")
    assert main(["--out", str(earlier), "--items", "5"]) == 1
    assert not (earlier / "leftover.txt").exists() and (earlier / ".tandem-demo").is_file()
