"""Experiment files (validation naming the key), sticky hash assignment with traffic shares, and the
attribution rule shared by the report and the live counters."""

import math
from collections import Counter

import pytest

from tandem.server.attribution import Exposure, LiveAttribution, attribute
from tandem.server.cli import main
from tandem.server.experiment import load_experiment, parse_experiment, user_fraction

GOOD = """
name = "exp-1"
attribution_window_s = 3600
attribution = "shown"

[[arms]]
name = "control"
share = 0.5

[[arms]]
name = "treatment"
share = 0.3
ranker = false
[arms.pipeline]
recommend_sources = ["popularity"]
fusion_method = "weighted"
source_weights = { popularity = 2.0 }

[[arms]]
name = "pinned"
share = 0.2
bundle = "v1"
"""


def test_a_good_file_loads(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text(GOOD)
    exp = load_experiment(f)
    assert exp.name == "exp-1" and exp.control.name == "control" and exp.attribution_window_s == 3600
    assert [a.name for a in exp.arms] == ["control", "treatment", "pinned"]
    t = exp.arm("treatment")
    assert not t.ranker and t.pipeline == {"recommend_sources": ("popularity",), "fusion_method": "weighted",
                                           "source_weights": {"popularity": 2.0}}
    assert exp.arm("pinned").bundle == "v1" and exp.control.is_plain and not t.is_plain


ARMS = '[[arms]]\nname = "a"\nshare = 0.5\n[[arms]]\nname = "b"\nshare = 0.5\n'


@pytest.mark.parametrize("text, message", [
    ('name = "x"\nbogus = 1\n' + ARMS, "unknown key bogus"),
    ('name = "bad name"\n' + ARMS, "name must be 1-64 letters"),
    (ARMS, "name must be"),
    ('name = "x"\nattribution_window_s = 0\n' + ARMS, "attribution_window_s must be > 0"),
    ('name = "x"\nattribution_window_s = "1d"\n' + ARMS, "attribution_window_s must be a number"),
    ('name = "x"\nattribution = "last"\n' + ARMS, "attribution must be one of shown, any"),
    ('name = "x"\nalpha = 0.7\n' + ARMS, "alpha must be in (0, 0.5)"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 1.0\n', "at least two [[arms]]"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 0.5\n[[arms]]\nname = "a"\nshare = 0.5\n', "arms[1].name 'a' names two"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 0.5\n[[arms]]\nname = "b"\nshare = 0.4\n',
     "arms[*].share must sum to 1, got 0.9"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 0.5\n[[arms]]\nname = "b"\n', "arms[1].share is missing"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 1.5\n[[arms]]\nname = "b"\nshare = -0.5\n', "arms[0].share must be in"),
    ('name = "x"\n[[arms]]\nname = "a"\nshare = 0\n[[arms]]\nname = "b"\nshare = 1\n', "arms[0].share must be > 0"),
    ('name = "x"\n' + ARMS + 'bundel = "v1"\n', "unknown key arms[1].bundel"),
    ('name = "x"\n' + ARMS + 'bundle = "../v1"\n', "arms[1].bundle: version must be a bundle folder name"),
    ('name = "x"\n' + ARMS + 'ranker = "no"\n', "arms[1].ranker must be true or false"),
    ('name = "x"\n' + ARMS + '[arms.pipeline]\nfused_kk = 3\n', "unknown key arms[1].pipeline.fused_kk"),
    ('name = "x"\n' + ARMS + '[arms.pipeline]\nfused_k = "3"\n', "arms[1].pipeline.fused_k must be an integer"),
    ('name = "x"\n' + ARMS + '[arms.pipeline]\nfused_k = 0\n', "arms[1].pipeline: pipeline.per_source_k and"),
    ('name = "x"\n' + ARMS + '[arms.pipeline]\nrecommend_sources = ["nope"]\n', "arms[1].pipeline: "),
    ('name = "x"\n' + ARMS + '[arms.pipeline]\nfusion_method = "max"\n', "pipeline.fusion_method must be"),
    ('name = [\n', "not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_key(tmp_path, text, message):
    f = tmp_path / "e.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as err:
        load_experiment(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_check_command_and_serve_exit_2_with_one_line(tmp_path, capsys):
    f = tmp_path / "e.toml"
    f.write_text(GOOD)
    assert main(["experiment", "check", str(f)]) == 0
    out = capsys.readouterr().out
    assert "control" in out and "no ranker" in out and "bundle v1" in out
    f.write_text(GOOD.replace("share = 0.2", "share = 0.3"))
    assert main(["serve", "--bundles", str(tmp_path), "--experiment", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("tandem serve: error: experiment file") and "sum to 1" in err
    assert main(["serve", "--bundles", str(tmp_path), "--experiment", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_assignment_is_sticky_and_follows_the_shares():
    exp = parse_experiment({"name": "shares", "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.3},
                                                       {"name": "c", "share": 0.2}]})
    users = [f"u{i}" for i in range(20_000)]
    got = Counter(exp.assign(u).name for u in users)
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        sd = math.sqrt(share * (1 - share) / len(users))
        assert abs(got[name] / len(users) - share) < 4 * sd, got  # binomial: 4 sd is never hit by chance here
    assert all(exp.assign(u) is exp.assign(u) for u in users[:500])  # sticky
    # another name reshuffles: about half of a 50/50 split's users change arm
    other = parse_experiment({"name": "shares-2", "arms": exp.describe()["arms"]})
    moved = sum(exp.assign(u).name != other.assign(u).name for u in users) / len(users)
    assert 0.5 < moved < 0.7  # 1 - (0.5^2 + 0.3^2 + 0.2^2) = 0.62 expected


def test_user_fraction_is_the_documented_hash():
    import hashlib

    digest = hashlib.sha256(b"exp\x00user-7").digest()
    assert user_fraction("exp", "user-7") == int.from_bytes(digest[:8], "big") / 2**64


def test_a_zero_share_arm_gets_nobody():
    exp = parse_experiment({"name": "z", "arms": [{"name": "a", "share": 1.0}, {"name": "b", "share": 0.0}]})
    assert {exp.assign(f"u{i}").name for i in range(2000)} == {"a"}


def _x(ts, arm, items=("i1", "i2")):
    return Exposure(ts, "u", arm, "recommend", tuple(items))


def test_attribution_takes_the_last_exposure_within_the_window():
    xs = [_x(100.7, "a"), _x(200.2, "b", ("i3",)), _x(300.0, "a", ("i1",))]
    secs = [x.second for x in xs]
    assert attribute(xs, secs, "i1", 99, 50, True) is None  # before any exposure
    assert attribute(xs, secs, "i1", 100, 50, True) == 0  # the same second counts as after
    assert attribute(xs, secs, "i1", 150, 50, True) == 0
    assert attribute(xs, secs, "i1", 151, 50, True) is None  # past the window
    assert attribute(xs, secs, "i1", 210, 200, True) == 0  # shown: the last exposure that showed i1
    assert attribute(xs, secs, "i1", 210, 200, False) == 1  # any: the last exposure, whatever it showed
    assert attribute(xs, secs, "i9", 210, 200, True) is None  # shown by nobody
    assert attribute(xs, secs, "i1", 300, 10, True) == 2


def test_live_attribution_forgets_the_least_recent_users():
    live = LiveAttribution(window_s=60, shown_only=True, users=2, per_user=2)
    for user in ("u1", "u2", "u3"):
        live.add(Exposure(1000.0, user, "a", "search", ("i1",)))
    assert live.attribute("u1", "i1", 1010) is None and live.attribute("u3", "i1", 1010).arm == "a"
    for ts in (1001.0, 1002.0, 1003.0):
        live.add(Exposure(ts, "u3", "b", "search", (f"x{ts:.0f}",)))
    assert live.attribute("u3", "i1", 1010) is None  # only the last 2 exposures are kept
    assert live.attribute("u3", "x1003", 1010).arm == "b"
