"""`sipstatus decode`: validate a body and print it, or name what is wrong."""


from sipstatus.cli import main
from tests.support import ROOT

VECTORS = ROOT / "spec" / "vectors" / "body"


def test_decode_prints_a_valid_body_readably(capsys):
    assert main(["decode", str(VECTORS / "valid-typical.json")]) == 0
    out = capsys.readouterr().out
    assert "node       ast1.example.com" in out
    assert "weight 63" in out


def test_decode_shows_unknown_metrics_as_unknown(capsys):
    assert main(["decode", str(VECTORS / "valid-unknown-metrics.json")]) == 0
    out = capsys.readouterr().out
    assert "cpu        unknown" in out
    assert "memory     total=?  available=8000000000  used=?" in out


def test_decode_names_the_member_and_rule_of_an_invalid_body(capsys):
    assert main(["decode", str(VECTORS / "invalid-mos-above-4.5.json")]) == 1
    err = capsys.readouterr().err
    assert "quality.mos: 4.8 is above the maximum 4.5 (rule: maximum)" in err


def test_decode_reports_a_missing_file(capsys, tmp_path):
    assert main(["decode", str(tmp_path / "nope.json")]) == 1
    assert "nope.json" in capsys.readouterr().err
