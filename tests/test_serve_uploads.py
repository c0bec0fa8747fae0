"""fcnseg.serve.uploads without a server: what ``sniff`` accepts and refuses (status and one-line detail) and the
upload names that messages show."""

import numpy as np
import pytest
from fastapi import HTTPException
from helpers import jpeg_bytes, photo_jpeg, png_bytes

from fcnseg.serve.uploads import safe_name, sniff


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "x.jpg: empty file (0 bytes)"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n", 415, "x.jpg: not a JPEG, PNG, WebP, BMP, TIFF or GIF image"),
    (photo_jpeg(300, 400), 413, "x.jpg: 400x300 is 0.1 Mpixel, more than the limit of 0.1 Mpixel"),
])
def test_sniff_refuses_with_the_status_and_names_the_file(data, status, words):
    with pytest.raises(HTTPException) as e:
        sniff(data, "x.jpg", max_pixels=100_000)
    assert e.value.status_code == status and e.value.detail.startswith(words), e.value.detail


def test_sniff_reads_the_format_from_the_content_not_the_name():
    rgb = np.zeros((20, 30, 3), np.uint8)
    assert sniff(png_bytes(rgb), "photo.jpg", max_pixels=1000) == ("PNG", 30, 20)
    assert sniff(jpeg_bytes(rgb), "photo.png", max_pixels=1000) == ("JPEG", 30, 20)


def test_safe_name_keeps_the_last_part_in_printable_ascii():
    assert safe_name("C:\\photos\\a b.jpg") == "a b.jpg" and safe_name("../../x\u202e.png") == "x_.png"
    assert safe_name("") == "upload" and safe_name(None) == "upload"
