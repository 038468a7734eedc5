"""Inference sources: a directory, a glob, a video written here, a .txt list, unreadable files, bad streams."""

import logging

import cv2
import numpy as np
import pytest

from utils.dataloaders import LoadImages, LoadStreams


def _images(d, names=("a.jpg", "b.png")):
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        cv2.imwrite(str(d / n), np.full((48, 64, 3), 40 * i, np.uint8))
    return d


def _video(path, frames=6, size=(64, 48)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert w.isOpened()
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    w.release()
    return path


def test_directory(tmp_path):
    d = _images(tmp_path / "imgs")
    (d / "notes.txt").write_text("not media")
    items = list(LoadImages(str(d), img_size=64, stride=32))
    assert [p for p, *_ in items] == [str(d / "a.jpg"), str(d / "b.png")]
    path, im, im0, cap, s = items[0]
    assert im.shape == (3, 64, 64) and im0.shape == (48, 64, 3) and cap is None and s.startswith("image 1/2 ")


def test_glob(tmp_path):
    d = _images(tmp_path / "imgs", ("a.jpg", "b.png", "c.jpg"))
    assert [p for p, *_ in LoadImages(str(d / "*.jpg"), img_size=64)] == [str(d / "a.jpg"), str(d / "c.jpg")]


def test_video_and_vid_stride(tmp_path):
    v = _video(tmp_path / "clip.avi")
    frames = list(LoadImages(str(v), img_size=64))
    assert len(frames) == 6 and frames[0][3] is not None and frames[0][2].shape == (48, 64, 3)
    assert frames[2][4].startswith("video 1/1 (3/6)")
    assert len(list(LoadImages(str(v), img_size=64, vid_stride=2))) == 3


def test_txt_list_of_media(tmp_path, monkeypatch):
    d = _images(tmp_path / "imgs")
    _video(d / "clip.avi", frames=2)
    lst = tmp_path / "list.txt"
    lst.write_text(f"./imgs/b.png\n{d / 'clip.avi'}\n\nimgs/a.jpg\n")
    monkeypatch.chdir(tmp_path.parent)  # relative entries resolve from the list's folder when not found here
    paths = [p for p, *_ in LoadImages(str(lst), img_size=64)]
    assert paths == [str(d / "a.jpg"), str(d / "b.png"), str(d / "clip.avi"), str(d / "clip.avi")]


def test_unreadable_image_is_skipped_with_a_warning(tmp_path, caplog):
    d = _images(tmp_path / "imgs")
    (d / "broken.jpg").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="yolov5"):
        paths = [p for p, *_ in LoadImages(str(d), img_size=64)]
    assert paths == [str(d / "a.jpg"), str(d / "b.png")] and "broken.jpg: not a readable image" in caplog.text


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LoadImages(str(tmp_path / "nothing.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No images or videos found"):
        LoadImages(str(tmp_path / "empty"))


def test_stream_that_cannot_open(tmp_path):
    with pytest.raises(ConnectionError, match="could not open"):
        LoadStreams(str(tmp_path / "no_such_stream.mp4"))


def test_stream_from_a_file_source(tmp_path):
    src = _video(tmp_path / "s.avi", frames=3)
    streams = LoadStreams(str(src), img_size=64, stride=32)
    assert streams.imgs[0].shape == (48, 64, 3) and len(streams) == 1
    streams.close()
    for t in streams.threads:
        t.join(timeout=5)
