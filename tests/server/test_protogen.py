from tandem.server.protogen import OUT, generate


def test_committed_stubs_are_fresh(tmp_path):
    for fresh in generate(tmp_path):
        committed = OUT / fresh.name
        assert committed.is_file(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), f"{committed.name} is stale: run `make proto`"
