"""The CLI client (`tandem search/recommend/similar/record/get-item/status/reload`, over
server.client) against an in-process server, plain and over TLS with a bearer token."""

import io
import json
import shutil
import subprocess

import grpc
import pytest

from tandem.server.cli import main
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


@pytest.fixture(scope="module")
def addr(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, token="tok", workers=4), load_fake_engine)
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output(addr, capsys):
    code, out, _ = run(capsys, "recommend", "--addr", addr, "--user", "alice", "--k", "2", "--json")
    data = json.loads(out)
    assert code == 0 and data["cold_start"] is False and data["bundle_version"]
    assert [(i["item_id"], i["title"]) for i in data["items"]] == [("i04", "item 4 red"), ("i05", "item 5 green")]
    assert data["items"][0]["score"] == pytest.approx(0.95)
    code, out, _ = run(capsys, "search", "--addr", addr, "--query", "blue", "--k", "2", "--json")
    assert code == 0 and [i["item_id"] for i in json.loads(out)["items"]] == ["i02", "i06"]
    code, out, _ = run(capsys, "similar", "--addr", addr, "--item", "i05", "--k", "1", "--json")
    assert code == 0 and json.loads(out)["items"][0]["item_id"] == "i04"


def test_table_output_and_explain(addr, capsys):
    code, out, _ = run(capsys, "search", "--addr", addr, "--query", "red", "--k", "2", "--explain")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("bundle ")
    assert lines[1].split()[:2] == ["1.", "i00"] and "item 0 red" in lines[1]
    assert "found by fake#1" in lines[2]
    code, out, _ = run(capsys, "recommend", "--addr", addr, "--user", "stranger", "--k", "1")
    assert code == 0 and "(cold start)" in out.splitlines()[0]


def test_search_candidates_from_ids_a_file_or_stdin(addr, capsys, tmp_path, monkeypatch):
    code, out, _ = run(capsys, "search", "--addr", addr, "--query", "item red", "--k", "5", "--json",
                       "--candidates", "i01, i04,ghost,i08,")
    data = json.loads(out)
    assert code == 0 and [i["item_id"] for i in data["items"]] == ["i04", "i08", "i01"]
    assert data["unknown_candidates"] == 1
    ids = tmp_path / "candidates.txt"
    ids.write_text("i03\n\n  i00  \nnope\ni12\n")
    code, out, _ = run(capsys, "search", "--addr", addr, "--query", "red", "--k", "2", "--candidates", str(ids))
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("(1 unknown candidates skipped)")
    assert [line.split()[1] for line in lines[1:]] == ["i00", "i12"]
    monkeypatch.setattr("sys.stdin", io.StringIO("i05\ni06\n"))
    code, out, _ = run(capsys, "search", "--addr", addr, "--query", "blue", "--json", "--candidates", "-")
    assert code == 0 and [i["item_id"] for i in json.loads(out)["items"]] == ["i06", "i05"]


def test_search_candidates_errors(addr, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run(capsys, "search", "--addr", addr, "--query", "red", "--candidates", "i01,i02,i01")
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: candidate_item_ids[2] must not repeat")
    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"i{n}" for n in range(1001)))
    with pytest.raises(SystemExit) as exc:
        run(capsys, "search", "--addr", addr, "--query", "red", "--candidates", str(many))
    assert exc.value.code == 1
    assert capsys.readouterr().err.startswith("INVALID_ARGUMENT: candidate_item_ids must have at most 1000 ids")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code, _, err = run(capsys, "search", "--addr", addr, "--query", "red", "--candidates", str(empty))
    assert code == 2 and err.startswith("tandem search: error: --candidates") and "names no item ids" in err


def test_search_help_names_the_candidates_flag_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--candidates FILE|IDS" in text and "(default: search the whole catalog)" in text


def test_record_then_recommend_and_status(addr, capsys):
    code, out, _ = run(capsys, "record", "--addr", addr, "--token", "tok", "--user", "zoe", "--item", "i17",
                       "--event", "click", "--json")
    assert code == 0 and json.loads(out)["accepted"] == 1 and json.loads(out)["applied"] == 1
    code, out, _ = run(capsys, "recommend", "--addr", addr, "--user", "zoe", "--k", "1", "--json")
    assert json.loads(out)["items"][0]["item_id"] == "i18"
    code, out, _ = run(capsys, "status", "--addr", addr, "--token", "tok")
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and fields["items"] == "20" and int(fields["event_log_sequence"]) >= 1
    assert fields["last_reload_error"] == "-"


def test_record_with_event_id_is_logged_once(addr, capsys):
    argv = ("record", "--addr", addr, "--token", "tok", "--user", "yann", "--item", "i11", "--event-id", "yann-1")
    code, out, _ = run(capsys, *argv, "--json")
    first = json.loads(out)
    assert code == 0 and (first["accepted"], first["applied"], first["duplicates"]) == (1, 1, 0)
    code, out, _ = run(capsys, *argv)  # a repeat (e.g. a retried script) is acknowledged, not logged again
    assert code == 0 and out.strip() == (f"recorded 1 event(s), 0 applied, 1 already logged (same event id), "
                                         f"log position {first['last_sequence']}")


def test_get_item_and_reload(addr, capsys):
    code, out, _ = run(capsys, "get-item", "--addr", addr, "--item", "i03", "--json")
    assert code == 0 and json.loads(out) == {"item_id": "i03", "title": "item 3 black", "description": "",
                                             "category": "Home > Kitchen", "brand": "acme", "price": 8.0,
                                             "tags": [], "in_stock": True}
    code, out, _ = run(capsys, "get-item", "--addr", addr, "--item", "i03")
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and fields["title"] == "item 3 black" and fields["description"] == "-"
    code, out, _ = run(capsys, "status", "--addr", addr, "--token", "tok", "--json")
    version = json.loads(out)["bundle_version"]
    code, out, _ = run(capsys, "reload", "--addr", addr, "--token", "tok", "--json")
    assert code == 0 and json.loads(out) == {"version": version, "swapped": False, "error": ""}
    # a version that is no bundle folder is refused before anything loads (INVALID_ARGUMENT, exit 1)
    with pytest.raises(SystemExit) as exc:
        run(capsys, "reload", "--addr", addr, "--token", "tok", "--version", "v-missing")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("INVALID_ARGUMENT: version 'v-missing' is not a bundle folder")


@pytest.mark.parametrize(("argv", "message"), [
    (("get-item", "--item", "nope"), "NOT_FOUND: unknown item_id 'nope'"),
    (("reload", "--version", "../x"), "UNAUTHENTICATED"),
    (("reload", "--token", "tok", "--version", "../x"), "INVALID_ARGUMENT: version must be a bundle folder name"),
    (("recommend", "--user", "u", "--k", "0"), "INVALID_ARGUMENT: k must be between 1 and 1000, got 0"),
    (("similar", "--item", "nope"), "NOT_FOUND: unknown item_id 'nope'"),
    (("record", "--user", "u", "--item", "i01"), "UNAUTHENTICATED: missing or wrong bearer token"),
    (("record", "--user", "u", "--item", "i01", "--token", "tok", "--event", "like"),
     "INVALID_ARGUMENT: events[0].event must be one of"),
    (("status", "--token", "nope"), "UNAUTHENTICATED"),
])
def test_rpc_errors_exit_nonzero_with_code_and_message(addr, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main([argv[0], "--addr", addr, *argv[1:]])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith(message), err


def test_unreachable_server(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--addr", "127.0.0.1:9", "--query", "x", "--timeout", "1"])
    assert exc.value.code == 1 and capsys.readouterr().err.split(":")[0] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def test_missing_ca_file_is_a_one_line_usage_error(addr, tmp_path, capsys):
    code, _, err = run(capsys, "status", "--addr", addr, "--tls-ca", str(tmp_path / "ca.pem"))
    assert code == 2 and err.startswith("tandem status: error: tls_ca ") and len(err.splitlines()) == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_with_token(tmp_path, capsys):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    root = tmp_path / "bundles"
    write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, token="tok", tls_cert=cert, tls_key=key, workers=2),
                          load_fake_engine)
    addr = f"127.0.0.1:{server.start()}"
    try:
        code, out, _ = run(capsys, "status", "--addr", addr, "--token", "tok", "--tls-ca", str(cert), "--json")
        assert code == 0 and json.loads(out)["items"] == 20
        with grpc.insecure_channel(addr) as channel:  # plaintext is not served
            with pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(channel).result(timeout=1)
    finally:
        server.stop(0)
