"""Images in chat messages: found, fetched, decoded and bounded at the HTTP edge.

Every chat-shaped API turns its image parts into OpenAI chat `image_url` parts first (Responses
`input_image`, Anthropic `image` blocks), so this module sees one shape: `{"type": "image_url",
"image_url": {"url": ..., "detail": ...}}` inside a message's content list. `collect_images`
decodes each one (in prompt order) into an `ImageInput` and puts `{"type": "image"}` in its
place: the placeholder vision chat templates render as the model's image tokens.

Invariants:
- A bad image is a 400 naming its part (`messages[i].content[j]`), never a 500: undecodable
  bytes, a type outside `FORMATS`, more than `max_bytes` bytes or `max_pixels` pixels, too many
  images, a URL when offline, a fetch that fails or times out.
- Pillow reads the header (size, format) before it decodes any pixel, so an image bomb is refused
  without being decompressed; decoding runs in a worker thread (no MLX is involved).
- URL fetches follow no redirect to a private, loopback or link-local address, read at most
  `max_bytes`, and give up after `fetch_timeout_s`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np

from engines.types import ImageInput
from server.errors import APIError

# Pillow format name → the media types clients label it with.
FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
MEDIA_TYPES = frozenset(FORMATS.values()) | {"image/jpg"}
_MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImagePolicy:
    """Bounds on the images of one request (docs/api.md, "Images")."""

    max_bytes: int = 20 * 2**20  # one image's encoded size (OpenAI's limit)
    max_pixels: int = 5120 * 5120  # one image's width × height (a 5K screenshot fits)
    max_images: int = 16  # per request
    fetch_timeout_s: float = 10.0
    offline: bool = False  # http(s) URLs refused

    @classmethod
    def from_env(cls) -> ImagePolicy:
        """The default policy; offline when `MLXD_OFFLINE` or `HF_HUB_OFFLINE` is set."""
        flags = (os.environ.get(name, "") for name in ("MLXD_OFFLINE", "HF_HUB_OFFLINE"))
        return cls(offline=any(flag not in ("", "0", "false") for flag in flags))


# What a model that reads no images sees of an image in a tool's result (a Messages
# `tool_result`'s, a Responses `function_call_output`'s, a chat `tool` message's): a refused tool
# result would fail every later request of an agent's session (Claude Code's Read tool and
# Codex's image viewer return screenshots so). A vision model reads the image itself.
TOOL_IMAGE_TEXT = "[image: not shown, this model reads no images]"


def in_tool_results(messages: list[dict[str, Any]]) -> bool:
    """Whether a tool message (a tool's result: a screenshot, an image file read) holds an
    image part."""
    return any(
        messages[i]["role"] == "tool" and part.get("type") == "image_url"
        for i, _, part in _parts(messages)
    )


def tool_images_as_text(messages: list[dict[str, Any]], text: str) -> None:
    """Make each tool message holding an image text (in place), `text` in each image's place:
    what a model that reads no images sees of a tool's image, rather than a 400 that would fail
    every later request of an agent's session."""
    for message in messages:
        content = message.get("content")
        if message["role"] != "tool" or not isinstance(content, list):
            continue
        if any(part.get("type") == "image_url" for part in content):
            message["content"] = "".join(
                text if part.get("type") == "image_url" else str(part.get("text", ""))
                for part in content
            )


def first_image_param(messages: list[dict[str, Any]]) -> str:
    """Where the first image of `messages` (after `collect_images`) is, as an error's param."""
    i, j = next((i, j) for i, j, part in _parts(messages) if part.get("type") == "image")
    return f"messages[{i}].content[{j}]"


async def collect_images(
    messages: list[dict[str, Any]], policy: ImagePolicy
) -> tuple[ImageInput, ...]:
    """Decode the images of `messages` in order, replacing each part by `{"type": "image"}`
    (in place). Raises APIError (400) naming the first bad part."""
    found = [(i, j, part) for i, j, part in _parts(messages) if part.get("type") == "image_url"]
    if len(found) > policy.max_images:
        i, j, _ = found[policy.max_images]
        raise _bad(i, j, f"at most {policy.max_images} images are allowed per request")
    images = []
    for i, j, part in found:
        url = str((part.get("image_url") or {}).get("url") or "")
        data = await _read(url, policy, i, j)
        images.append(await asyncio.to_thread(decode_image, data, policy, i, j))
        messages[i]["content"][j] = {"type": "image"}
    return tuple(images)


def decode_image(data: bytes, policy: ImagePolicy, i: int, j: int) -> ImageInput:
    """RGB pixels of an encoded image, bounded in bytes and pixels; APIError otherwise."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > policy.max_bytes:
        raise _bad(i, j, f"the image is {len(data)} bytes; the limit is {policy.max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
            width, height = image.size
            if width * height > policy.max_pixels:
                raise _bad(
                    i,
                    j,
                    f"the image is {width}×{height} pixels; the limit is "
                    f"{policy.max_pixels} pixels",
                )
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        kinds = ", ".join(FORMATS.values())
        # PIL's own words name its in-memory file object (`<_io.BytesIO object at 0x…>`).
        reason = "no known image format" if isinstance(exc, UnidentifiedImageError) else exc
        raise _bad(i, j, f"the image could not be decoded as one of {kinds}: {reason}") from None
    return ImageInput(pixels, hashlib.sha256(data).hexdigest())


async def _read(url: str, policy: ImagePolicy, i: int, j: int) -> bytes:
    if url.startswith("data:"):
        return _data_uri(url, policy, i, j)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise _bad(i, j, "an image URL must be a data: URI or an http(s) URL")
    if policy.offline:
        raise _bad(
            i, j, "this server is offline: send the image inline (a base64 data: URI)", "offline"
        )
    return await _fetch(url, policy, i, j)


def _data_uri(url: str, policy: ImagePolicy, i: int, j: int) -> bytes:
    header, comma, payload = url.partition(",")
    media_type = header[5:].split(";")[0].strip().lower()
    if not comma or ";base64" not in header.lower():
        raise _bad(i, j, "a data: URI image must be base64 (data:image/png;base64,...)")
    if media_type not in MEDIA_TYPES:
        raise _bad(
            i,
            j,
            f"unsupported image type {media_type!r}; supported: {', '.join(FORMATS.values())}",
            "unsupported_image_type",
        )
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise _bad(i, j, f"the image is more than {policy.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(i, j, "the data: URI is not valid base64") from None


async def _fetch(url: str, policy: ImagePolicy, i: int, j: int) -> bytes:
    """GET `url` with a byte cap and a timeout, following redirects only to public hosts."""
    timeout = httpx.Timeout(policy.fetch_timeout_s)
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            for _ in range(_MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        if not await _public(url):
                            raise _bad(i, j, "the image URL redirects to a private address")
                        continue
                    if response.status_code != 200:
                        raise _bad(i, j, f"fetching the image answered {response.status_code}")
                    return await _capped_body(response, policy, i, j)
            raise _bad(i, j, f"the image URL redirects more than {_MAX_REDIRECTS} times")
    except httpx.HTTPError as exc:
        raise _bad(i, j, f"the image could not be fetched: {type(exc).__name__}") from None


async def _capped_body(response: httpx.Response, policy: ImagePolicy, i: int, j: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > policy.max_bytes:
            raise _bad(i, j, f"the image is more than {policy.max_bytes} bytes")
    return bytes(body)


async def _public(url: str) -> bool:
    """Whether every address `url`'s host resolves to is a public one."""
    host = urlsplit(url).hostname or ""
    if urlsplit(url).scheme.lower() not in ("http", "https") or not host:
        return False
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    return bool(addresses) and all(address.is_global for address in addresses)


def _parts(messages: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    return [
        (i, j, part)
        for i, message in enumerate(messages)
        if isinstance(message.get("content"), list)
        for j, part in enumerate(message["content"])
    ]


def _bad(i: int, j: int, message: str, code: str = "invalid_image") -> APIError:
    param = f"messages[{i}].content[{j}]"
    return APIError(400, f"{param}: {message}", param=param, code=code)
