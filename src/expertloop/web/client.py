"""A client for a remote ``expertloop serve``, authenticated by an API token.

Used by the napari "Remote annotation project" dock and by scripts. Only the
standard library (``urllib``) is needed: a napari user does not need the web
extra. The server sends rendered 8-bit pixels (PNG), never the original files.

::

    from expertloop.web.client import RemoteProject
    rp = RemoteProject("https://annotate.lab.example", "elt_...")
    rp.me()                                   # {"name": "bob", "role": "annotator", ...}
    for c in rp.collections(): ...
    pixels = rp.pixels(c["id"], image_id)     # numpy uint8 (rows, cols[, 3])
    rp.save(c["id"], image_id, label="abnormal", time_spent=3.2)
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RemoteError(RuntimeError):
    """The server refused the request (the message is the server's) or is unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteProject:
    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        url = url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RemoteError(f"{url!r} is not an http(s):// server address")
        token = token.strip()
        if not token:
            raise RemoteError("an API token is needed (Account page of the server, or "
                              "`expertloop store token`)")
        self.url, self._token, self.timeout = url, token, float(timeout)

    def __repr__(self) -> str:  # never shows the token
        return f"RemoteProject({self.url!r})"

    def _request(self, method: str, path: str, body: dict | None = None,
                 headers: dict | None = None) -> tuple[bytes, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}),
            **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            if exc.code == 304:  # not modified (a conditional request)
                return b"", dict(exc.headers)
            try:
                detail = json.loads(exc.read().decode()).get("detail", "")
            except (ValueError, AttributeError):
                detail = ""
            raise RemoteError(f"{exc.code}: {detail or exc.reason}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self.url}: {reason}") from None

    def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        raw, _ = self._request(method, path, body)
        return json.loads(raw.decode())

    # ------------------------------------------------------------ reads
    def me(self) -> dict:
        return self._json("GET", "/api/me")

    def collections(self) -> list[dict]:
        return self._json("GET", "/api/collections")

    def images(self, collection_id: int) -> list[dict]:
        return self._json("GET", f"/api/c/{int(collection_id)}/images")

    def annotations(self, collection_id: int) -> list[dict]:
        """My annotations of the collection (all of them for an admin)."""
        return self._json("GET", f"/api/c/{int(collection_id)}/annotations")

    def annotations_if_changed(self, collection_id: int,
                               etag: str | None = None) -> tuple[list[dict] | None, str | None]:
        """``(annotations, etag)``, or ``(None, etag)`` while they are unchanged since
        the response that gave ``etag`` (the server then sends no body)."""
        raw, headers = self._request("GET", f"/api/c/{int(collection_id)}/annotations",
                                     headers={"If-None-Match": etag} if etag else None)
        new = {k.lower(): v for k, v in headers.items()}.get("etag")
        if not raw:
            return None, new or etag
        return json.loads(raw.decode()), new

    def pixels(self, collection_id: int, image_id: int, *, z: int | None = None):
        """The rendered image (8-bit, contrast by the server) as a numpy array."""
        import imageio.v3 as iio

        query = f"?z={int(z)}" if z is not None else ""
        raw, _ = self._request("GET", f"/img/{int(collection_id)}/{int(image_id)}{query}")
        return iio.imread(io.BytesIO(raw), extension=".png")

    # ------------------------------------------------------------ writes
    def save(self, collection_id: int, image_id: int, *, label: str | None = None,
             value: dict | None = None, time_spent: float | None = None) -> dict:
        body: dict[str, Any] = {"image_id": int(image_id), "value": value or {}}
        if label is not None:
            body["label"] = str(label)
        if time_spent is not None:
            body["time_spent"] = float(time_spent)
        return self._json("POST", f"/api/c/{int(collection_id)}/annotations", body)
