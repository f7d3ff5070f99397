"""Label CSVs are read by column name; ambiguity is refused, never guessed."""

from __future__ import annotations

import pytest

from cnnlab.data.csvlabels import read_label_csv
from cnnlab.errors import CnnlabError


@pytest.fixture
def folder(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def write(folder, text):
    path = folder / "labels.csv"
    path.write_text(text)
    return path


def test_columns_are_found_by_their_header_names(folder):
    # the defect: a header filename,width,height,class trained on the width column
    csv = write(folder, "filename,width,height,class\na.png,28,28,cat\nb.png,32,32,dog\n")
    assert read_label_csv(csv).items == [("a.png", "cat"), ("b.png", "dog")]
    csv = write(folder, "Label,Image_Path\ncat,a.png\ndog,b.png\n")  # any order, any case
    assert read_label_csv(csv).items == [("a.png", "cat"), ("b.png", "dog")]


def test_a_plain_pair_needs_no_names_and_no_header(folder):
    assert read_label_csv(write(folder, "a.png,cat\nb.png,dog\n")).items == [("a.png", "cat"), ("b.png", "dog")]
    assert read_label_csv(write(folder, "img,species\na.png,cat\n")).items == [("a.png", "cat")]


def test_explicit_columns_win_like_keras_x_col_y_col(folder):
    csv = write(folder, "id,file,coarse,fine\n1,a.png,animal,cat\n2,b.png,animal,dog\n")
    with pytest.raises(CnnlabError, match=r"cannot tell which column of labels.csv holds the file and which the "
                                          r"label \(header: id, file, coarse, fine\); set `data.file_column`"):
        read_label_csv(csv)
    assert read_label_csv(csv, label_column="fine").items == [("a.png", "cat"), ("b.png", "dog")]
    with pytest.raises(CnnlabError, match=r"`data.label_column` 'species' is not a column of labels.csv"):
        read_label_csv(csv, label_column="species")


def test_two_candidate_columns_are_ambiguous(folder):
    csv = write(folder, "file,label,class\na.png,1,cat\n")
    with pytest.raises(CnnlabError, match=r"several columns that could be the label \(label, class\); say which "
                                          r"with `data.label_column`"):
        read_label_csv(csv)


def test_headerless_files_with_more_columns_are_refused(folder):
    with pytest.raises(CnnlabError, match="has no header row, so its 3 columns cannot be named"):
        read_label_csv(write(folder, "a.png,28,cat\n"))


def test_rows_outside_the_folder_missing_or_repeated_are_skipped_with_reasons(folder):
    csv = write(folder, "file,label\na.png,cat\n../../etc/passwd,x\n/etc/hostname,y\nnope.png,z\na.png,cat\nc.png,\n")
    found = read_label_csv(csv)
    assert found.items == [("a.png", "cat")]
    reasons = dict(found.skipped)
    assert "outside the folder" in reasons["../../etc/passwd"] and "outside the folder" in reasons["/etc/hostname"]
    assert reasons["nope.png"] == "listed in labels.csv but missing"
    assert reasons["c.png"] == "no label in labels.csv row 7"
    assert [r for f, r in found.skipped if f == "a.png"] == ["listed twice in labels.csv"]


def test_links_that_leave_the_folder_or_loop_are_skipped(folder, tmp_path_factory):
    import os

    secret = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    secret.write_bytes(b"x")
    os.symlink(secret, folder / "inside.png")  # a name inside the folder, a file outside it
    os.symlink("loop2.png", folder / "loop1.png")
    os.symlink("loop1.png", folder / "loop2.png")
    csv = write(folder, f"file,label\ninside.png,cat\nloop1.png,cat\n{secret},cat\na.png,dog\n")
    found = read_label_csv(csv)
    assert found.items == [("a.png", "dog")]
    assert dict(found.skipped) == {
        "inside.png": "outside the folder of labels.csv (row 2); only files under it are read",
        "loop1.png": "a symbolic link that loops (labels.csv row 3)",
        str(secret): "outside the folder of labels.csv (row 4); only files under it are read"}
