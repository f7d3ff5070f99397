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


def test_backslash_paths_and_row_numbers_of_a_headerless_file(folder):
    (folder / "sub").mkdir()
    (folder / "sub" / "d.png").write_bytes(b"x")
    found = read_label_csv(write(folder, "sub\\d.png,cat\nb.png,\n"))  # Windows separators; row 2 has no label
    assert found.items == [("sub/d.png", "cat")]
    assert found.skipped == [("b.png", "no label in labels.csv row 2")]  # no header: the first row is row 1


def test_a_headerless_file_takes_no_column_names(folder):
    message = (r"^labels.csv has no header row, so its 2 columns cannot be named; add a header \(e.g. file,label\) "
               r"and set `data.file_column` / `data.label_column`$")
    for given in ({"file_column": "file"}, {"label_column": "label"}):
        with pytest.raises(CnnlabError, match=message):
            read_label_csv(write(folder, "a.png,cat\n"), **given)


def test_a_named_file_column_is_used_and_a_wrong_one_is_named_with_the_header(folder):
    csv = write(folder, "path,image,label\nx,a.png,cat\n")  # two names that could be the file
    assert read_label_csv(csv, file_column="Image").items == [("a.png", "cat")]
    with pytest.raises(CnnlabError, match=r"^`data.file_column` 'nope' is not a column of labels.csv \(its header: "
                                          r"path, image, label\)$"):
        read_label_csv(csv, file_column="nope")


def test_two_column_headers_fix_the_unnamed_column_from_the_named_one(folder):
    cases = {"species,img\ncat,a.png\n": [("a.png", "cat")],  # the file named second: the label is column 0
             "label,kind\ncat,a.png\n": [("a.png", "cat")],  # the label named first: the file is column 1
             "kind,label\na.png,cat\n": [("a.png", "cat")],
             "first,second\na.png,cat\n": [("a.png", "cat")]}  # neither named: file,label
    for text, items in cases.items():
        assert read_label_csv(write(folder, text)).items == items, text


def test_short_and_blank_rows_are_skipped_and_fields_keep_their_newlines(folder):
    found = read_label_csv(write(folder, "file,label\nc.png\n , \na.png,\"two\r\nlines\"\n"))
    assert found.items == [("a.png", "two\r\nlines")]  # csv module docs: open with newline="" to keep these
    assert found.skipped == [("c.png", "no label in labels.csv row 2")]  # " , " is a blank row, not a row
    found = read_label_csv(write(folder, "label,file\ncat\n"))  # no file cell at all
    assert found.items == [] and found.skipped == [("", "listed in labels.csv but missing")]


def test_excel_byte_order_mark_and_unreadable_files(folder):
    path = folder / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbffile,width,label\na.png,28,cat\n")  # Excel's "CSV UTF-8" starts with a BOM
    assert read_label_csv(path).items == [("a.png", "cat")]
    path.write_bytes(b"file,label\n\xe9t\xe9.png,cat\n")  # Latin-1, not UTF-8
    with pytest.raises(CnnlabError, match=rf"^label CSV {path} cannot be read \(.*utf-8.*\); save it as UTF-8 CSV$"):
        read_label_csv(path)
