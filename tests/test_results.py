"""lora_teach.results: the one way results files are read and written."""

import pytest

from lora_teach.results import RESULTS, append_row, read_csv, write_csv


def test_a_bare_name_reads_the_shipped_file_and_a_path_reads_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lr_grid.csv").write_text("method\nnot the shipped one\n")
    assert read_csv("lr_grid.csv") == read_csv(RESULTS / "lr_grid.csv") != read_csv(tmp_path / "lr_grid.csv")


def test_a_missing_file_is_named_or_empty_when_allowed(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_csv(tmp_path / "nothing.csv")
    assert read_csv(tmp_path / "nothing.csv", missing_ok=True) == []


def test_written_and_appended_rows_read_back_with_floats_to_six_digits(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"method": "lora", "loss": 1 / 3}, {"method": "full", "seed": 2}])
    assert read_csv(path) == [{"method": "lora", "loss": "0.333333", "seed": ""},
                              {"method": "full", "loss": "", "seed": "2"}]
    append_row(tmp_path / "b.csv", {"method": "lora", "lr": 0.001}, ("method", "lr"))
    append_row(tmp_path / "b.csv", {"method": "full", "lr": 3e-4}, ("method", "lr"))
    assert read_csv(tmp_path / "b.csv") == [{"method": "lora", "lr": "0.001"}, {"method": "full", "lr": "0.0003"}]


def test_appending_to_a_file_with_other_columns_is_refused_and_leaves_it_alone(tmp_path):
    path = tmp_path / "b.csv"
    append_row(path, {"method": "lora"}, ("method",))
    before = path.read_text()
    with pytest.raises(ValueError, match="columns"):
        append_row(path, {"method": "lora", "lr": 0.1}, ("method", "lr"))
    assert path.read_text() == before
    with pytest.raises(ValueError, match="no rows"):
        write_csv(tmp_path / "c.csv", [])
