"""An offer body decoded in pieces (issue 22, signaling bounded): a big body's style is cut out of the JSON and
decoded a chunk at a time, and the result is exactly what parsing the whole body gives; anything that would make
the two differ, or hold the interpreter in one long call, is refused."""

from __future__ import annotations

import base64
import json
import os

import pytest

from streaming.protocol import (
    BASE64_CHUNK_CHARS,
    MAX_OFFER_FIELDS_BYTES,
    MAX_STYLE_BYTES,
    ErrorCode,
    ProtocolError,
    decode_offer,
)

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\n"


def _reference(body: bytes) -> tuple[str, bytes]:
    """What the whole body means, parsed the plain way: (sdp, style bytes)."""
    data = json.loads(body)
    return data["sdp"], base64.b64decode(data["style"], validate=True)


@pytest.mark.parametrize("size", [10, MAX_OFFER_FIELDS_BYTES, BASE64_CHUNK_CHARS * 3 // 4 * 5 + 1, MAX_STYLE_BYTES])
@pytest.mark.parametrize("style_first", [True, False])
def test_a_body_of_any_size_decodes_as_the_whole_body_parses(size: int, style_first: bool) -> None:
    style = os.urandom(size)
    fields: dict[str, object] = {"type": "offer", "sdp": SDP, "out_width": 64, "out_height": 48}
    encoded = base64.b64encode(style).decode()
    body = json.dumps({"style": encoded, **fields} if style_first else {**fields, "style": encoded}).encode()
    offer = decode_offer(body)
    assert (offer.sdp, offer.style) == _reference(body) and offer.out_size == (64, 48)


def _big(style: str, **extra: str) -> bytes:
    body = {"type": "offer", "sdp": SDP, **extra, "style": style}
    return json.dumps(body).encode()


STYLE = base64.b64encode(os.urandom(MAX_OFFER_FIELDS_BYTES)).decode()


def _refused(body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_offer(body)
    return caught.value


def test_a_second_big_field_is_refused() -> None:
    assert _refused(_big(STYLE, padding="x" * MAX_OFFER_FIELDS_BYTES)).code == ErrorCode.TOO_LARGE


def test_an_escaped_style_is_refused() -> None:
    escaped = json.dumps({"type": "offer", "sdp": SDP, "style": STYLE}).replace("/", "\\/").encode()
    assert json.loads(escaped)["style"] == STYLE  # the same document for a plain parser
    assert "base64" in str(_refused(escaped))


def test_a_duplicated_style_cannot_smuggle_another_value() -> None:
    """A plain parser keeps the last of duplicated keys: the cut must be that one, or the body is refused."""
    body = b'{"type": "offer", "sdp": "v=0", "style": "' + STYLE.encode() + b'", "style": "QUFB"}'
    assert "plain base64" in str(_refused(body))
    body = b'{"type": "offer", "sdp": "v=0", "style": "QUFB", "style": "' + STYLE.encode() + b'"}'
    assert decode_offer(body).style == _reference(body)[1]


def test_a_key_that_only_looks_like_style_is_not_taken_for_it() -> None:
    body = b'{"type": "offer", "sdp": "v=0", "\\"style": "' + STYLE.encode() + b'", "style": "QUFB"}'
    assert json.loads(body)["style"] == "QUFB"
    assert "plain base64" in str(_refused(body))


def test_padding_inside_a_big_style_is_refused() -> None:
    style = "QQ==" * (MAX_OFFER_FIELDS_BYTES // 4 + 1)
    with pytest.raises(ValueError):
        base64.b64decode(style, validate=True)  # and so does the plain decoder
    assert "base64" in str(_refused(_big(style)))


def test_a_style_over_the_limit_is_refused_before_decoding() -> None:
    style = "A" * (4 * (MAX_STYLE_BYTES // 3 + 1) + 4)
    assert _refused(_big(style)).code == ErrorCode.TOO_LARGE
