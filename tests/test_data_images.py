"""Listing images: directories, text and CSV list files, keys, order, skips and errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from savedeep.errors import InputError
from savedeep.data.images import ImageEntry, list_images


def _tree(root: Path, photos: list[Path]) -> None:
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    shutil.copy(photos[0], root / "z.jpg")
    shutil.copy(photos[0], root / "b" / "deep" / "x.JPEG")
    shutil.copy(photos[1], root / "a" / "y.png")
    shutil.copy(photos[1], root / "b" / "c.webp")
    (root / "README.txt").write_text("not an image")
    (root / "a" / "notes.md").write_text("x")
    (root / "a" / "Makefile").write_text("x")
    (root / "b" / "data.txt").write_text("x")


def test_directory_is_recursive_sorted_with_relative_keys(tmp_path, photos):
    _tree(tmp_path, photos)
    listed = list_images(tmp_path)
    assert listed.keys == ["a/y.png", "b/c.webp", "b/deep/x.JPEG", "z.jpg"]
    assert listed.entries[2] == ImageEntry("b/deep/x.JPEG", tmp_path / "b" / "deep" / "x.JPEG")
    assert all(e.path.is_file() for e in listed.entries)
    assert listed.skipped == {".txt": 2, ".md": 1, "(none)": 1}
    assert listed.metadata == {}
    assert len(listed) == 4


def test_directory_order_does_not_depend_on_creation_order(tmp_path, photos):
    for name in ["b.jpg", "a.jpg", "c.jpg", "B.jpg", "a0.jpg"]:
        shutil.copy(photos[0], tmp_path / name)
    assert list_images(tmp_path).keys == sorted(["b.jpg", "a.jpg", "c.jpg", "B.jpg", "a0.jpg"])


def test_text_list_keeps_order_and_resolves_relative_to_the_list(tmp_path, photos):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(photos[0], imgs / "one.jpg")
    shutil.copy(photos[1], imgs / "two.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(imgs / "two.png")
    (lists / "l.txt").write_text(f"# comment\n../imgs/one.jpg\n\n  {absolute}  \n../imgs/missing.jpg\n")
    listed = list_images(lists / "l.txt")
    assert listed.keys == ["../imgs/one.jpg", absolute, "../imgs/missing.jpg"]
    assert listed.entries[0].path.resolve() == (imgs / "one.jpg").resolve()
    assert listed.entries[1].path == Path(absolute)
    # A missing entry is not an error at listing time: it fails when loaded.
    assert not listed.entries[2].path.exists()


def test_csv_list_carries_metadata_columns(tmp_path, photos):
    shutil.copy(photos[0], tmp_path / "p.jpg")
    shutil.copy(photos[1], tmp_path / "q.png")
    (tmp_path / "l.csv").write_text('\ufefflabel,path,split\ncat,q.png,train\n"dog, big",p.jpg,test\n')
    listed = list_images(tmp_path / "l.csv")
    assert listed.keys == ["q.png", "p.jpg"]
    assert listed.metadata == {"label": ["cat", "dog, big"], "split": ["train", "test"]}


def test_csv_without_path_column_is_an_input_error(tmp_path):
    (tmp_path / "l.csv").write_text("file,label\na.jpg,1\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list_images(tmp_path / "l.csv")


def test_duplicate_keys_are_named(tmp_path, photos):
    shutil.copy(photos[0], tmp_path / "a.jpg")
    (tmp_path / "l.txt").write_text("a.jpg\nb.jpg\n./a.jpg\nb.jpg\n")
    with pytest.raises(InputError, match=r"duplicate image keys 'a.jpg', 'b.jpg'"):
        list_images(tmp_path / "l.txt")


def test_empty_sources_are_input_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"no images found \(skipped by extension: .txt x1\)"):
        list_images(tmp_path / "d")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="no images found"):
        list_images(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_an_image_file_as_source_is_refused(tmp_path, photos):
    shutil.copy(photos[0], tmp_path / "a.jpg")
    with pytest.raises(InputError, match="is an image, not a directory"):
        list_images(tmp_path / "a.jpg")


def test_special_files_are_listed_so_they_fail_per_image(tmp_path, photos):
    shutil.copy(photos[0], tmp_path / "ok.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    (tmp_path / "dir.jpg").mkdir()  # a directory is walked into, not listed
    assert list_images(tmp_path).keys == ["dangling.jpg", "fifo.jpg", "ok.jpg"]
