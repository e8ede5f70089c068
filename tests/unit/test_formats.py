import pytest

from flowertune.catalog import FORMATS
from flowertune.config import DataConfig
from flowertune.data.formats import DataFormatError

ROW = {"instruction": "Answer this question truthfully", "input": "What causes scurvy?", "output": "Vitamin C lack."}


def test_challenge_mappings_match_flowertune_reformat():
    cfg = DataConfig()
    med = FORMATS.get("medical")(ROW, cfg)
    assert (med.text, med.response) == ("What causes scurvy?", "Vitamin C lack.")
    assert (med.instruction, med.input) == ("Answer this question truthfully", "What causes scurvy?")
    fin = FORMATS.get("finance")(ROW, cfg)
    assert (fin.text, fin.response) == ("Answer this question truthfully What causes scurvy?", "Vitamin C lack.")
    assert (fin.instruction, fin.input) == ("Answer this question truthfully", "What causes scurvy?")
    assert FORMATS.get("code")({**ROW, "input": ""}, cfg).text == "Answer this question truthfully"
    assert FORMATS.get("general-nlp")(ROW, cfg).text == "Answer this question truthfully"


def test_generic_uses_configured_columns():
    cfg = DataConfig(format="generic", instruction_column="q", input_column="", response_column="a")
    rec = FORMATS.get("generic")({"q": "Why?", "a": "Because."}, cfg)
    assert (rec.text, rec.response, rec.input) == ("Why?", "Because.", "")


def test_missing_column_names_columns_and_fix():
    cfg = DataConfig(format="generic", response_column="answer")
    with pytest.raises(DataFormatError) as exc:
        FORMATS.get("generic")(ROW, cfg)
    assert "'answer'" in str(exc.value) and "data.response-column" in str(exc.value) and "'output'" in str(exc.value)


def test_unknown_format_lists_valid():
    with pytest.raises(KeyError, match="general-nlp"):
        FORMATS.get("legal")
