"""Who may talk to the server, what it serves, and how it answers malformed requests (4xx, never 500)."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest
from PIL import Image

from segany.cli.serve import resolve_token
from segany.engine.security import host_name, is_loopback
from segany.masks import encode_rle

TOKEN = "t0ken-for-tests-0123456789"


def test_without_a_token_only_loopback_host_names_are_answered(make_client):
    client = make_client()
    assert client.get("/api/images").status_code == 200
    assert client.get("http://localhost:8000/api/images").status_code == 200
    refused = client.get("/api/images", headers={"Host": "attacker.example:8000"})  # DNS rebinding
    assert refused.status_code == 403 and "127.0.0.1" in refused.json()["detail"]


def test_other_sites_cannot_make_a_browser_write(client):
    prompt = {"points": [[5, 5]], "labels": [1]}
    foreign = client.post("/api/images/1/predict", json=prompt, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "other sites" in foreign.json()["detail"]
    assert client.post("/api/images/1/predict", json=prompt, headers={"Origin": "http://127.0.0.1"}).status_code == 200


def test_with_a_token_every_request_must_carry_it(make_client):
    client = make_client(token=TOKEN, base_url="http://192.168.1.5:8000")
    assert client.get("/api/images").status_code == 401
    assert client.get("/api/images", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/api/images", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    opened = client.get(f"/?token={TOKEN}")  # the printed address sets a cookie for the page's own requests
    assert opened.status_code == 200 and "HttpOnly" in opened.headers["set-cookie"]
    assert client.get("/api/images").status_code == 200
    client.cookies.clear()
    assert client.get("/static/app.js").status_code == 401


def test_token_policy_and_host_parsing(monkeypatch):
    monkeypatch.delenv("SEGANY_TOKEN", raising=False)
    assert resolve_token("127.0.0.1", None) is None
    assert len(resolve_token("0.0.0.0", None)) >= 16  # any other address gets a token
    assert resolve_token("0.0.0.0", TOKEN) == TOKEN
    monkeypatch.setenv("SEGANY_TOKEN", TOKEN)
    assert resolve_token("127.0.0.1", None) == TOKEN
    with pytest.raises(ValueError, match="at least 16"):
        resolve_token("0.0.0.0", "short")
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1")] == [True, True, True, False, False]
    assert [host_name(h) for h in ("a:80", "[::1]:80", "::1", "b")] == ["a", "::1", "::1", "b"]


@pytest.mark.parametrize(
    "url",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fstore.py",
        "/static//etc/passwd",
        "/api/images/..%2f..%2fetc%2fpasswd/file",
        "/api/images/1/../../../etc/passwd",
        "/../../etc/passwd",
    ],
)
def test_path_traversal_serves_nothing_outside(client, url):
    reply = client.get(url)
    assert reply.status_code in (400, 404, 405, 422)
    assert "import" not in reply.text and "root:" not in reply.text


def test_only_files_inside_the_images_folder_are_served(make_client, tmp_path, images_dir):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (9, 9), "red").save(secret)
    os.symlink(secret, images_dir / "link.png")  # a symlink inside pointing outside is not registered
    client = make_client()
    assert "link.png" not in [image["path"] for image in client.get("/api/images").json()["images"]]
    with sqlite3.connect(tmp_path / "db.sqlite") as db:  # nor served even if the database names it
        db.execute("INSERT INTO images(path, width, height, added_at) VALUES ('../secret.png', 9, 9, 0)")
        db.execute("INSERT INTO images(path, width, height, added_at) VALUES ('link.png', 9, 9, 0)")
    planted = [image for image in client.get("/api/images").json()["images"] if image["path"] in ("../secret.png", "link.png")]
    assert len(planted) == 2
    for image in planted:
        reply = client.get(f"/api/images/{image['id']}/file")
        assert reply.status_code == 404 and "not inside the images folder" in reply.json()["detail"]


def test_request_bodies_over_the_limit_are_refused(make_client):
    client = make_client(max_body_bytes=2000)
    big = {"points": [[1.0, 1.0]] * 10, "labels": [1] * 10, "padding": "x" * 5000}
    reply = client.post("/api/images/1/predict", json=big)
    assert reply.status_code == 413 and "too large" in reply.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 500

    reply = client.post("/api/images/1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413


def _rle(height: int, width: int) -> dict:
    mask = np.zeros((height, width), bool)
    mask[2:5, 2:5] = True
    return encode_rle(mask)


MALFORMED = [
    ("POST", "/api/images/1/predict", b"{not json", 422),
    ("POST", "/api/images/1/predict", [], 422),
    ("POST", "/api/images/1/predict", {}, 400),
    ("POST", "/api/images/1/predict", {"points": [[1, 2]], "labels": []}, 400),
    ("POST", "/api/images/1/predict", {"points": [[1, 2]], "labels": [2]}, 422),
    ("POST", "/api/images/1/predict", {"points": [[1]], "labels": [1]}, 422),
    ("POST", "/api/images/1/predict", {"points": [["a", 2]], "labels": [1]}, 422),
    ("POST", "/api/images/1/predict", b'{"points": [[NaN, 2]], "labels": [1]}', 422),
    ("POST", "/api/images/1/predict", b'{"points": [[Infinity, 2]], "labels": [1]}', 422),
    ("POST", "/api/images/1/predict", {"points": [[1e9, 2]], "labels": [1]}, 400),
    ("POST", "/api/images/1/predict", {"points": [[-1, 2]], "labels": [1]}, 400),
    ("POST", "/api/images/1/predict", {"points": [[1, 2]] * 65, "labels": [1] * 65}, 422),
    ("POST", "/api/images/1/predict", {"box": [30, 30, 10, 10]}, 400),
    ("POST", "/api/images/1/predict", {"box": [1, 2, 3]}, 422),
    ("POST", "/api/images/1/predict", {"points": [[1, 2]], "labels": [1], "extra": 1}, 422),
    ("POST", "/api/images/99/predict", {"points": [[1, 2]], "labels": [1]}, 404),
    ("POST", "/api/images/0/predict", {"points": [[1, 2]], "labels": [1]}, 422),
    ("POST", "/api/images/-3/embedding", None, 422),
    ("POST", "/api/images/abc/embedding", None, 422),
    ("GET", "/api/images/99999999999999999999999999", None, 422),
    ("GET", "/api/images/1.5", None, 422),
    ("POST", "/api/images/1/objects", {"rle": {"size": [3, 3], "counts": "0"}}, 400),
    ("POST", "/api/images/1/objects", {"rle": {"size": [60, 80], "counts": "@@@"}}, 400),
    ("POST", "/api/images/1/objects", {"rle": {"size": [60, 80], "counts": 5}}, 422),
    ("POST", "/api/images/1/objects", {"rle": _rle(60, 80), "seconds": -1}, 422),
    ("POST", "/api/images/1/objects", {"rle": _rle(60, 80), "label": "x" * 300}, 422),
    ("POST", "/api/images/1/objects", {"rle": _rle(60, 80), "source": "prefilled"}, 422),
    ("POST", "/api/images/1/objects", {"label": "no mask"}, 400),
    ("POST", "/api/images/1/objects", {"prompts": {"points": [[1, 2]], "labels": [1]}}, 400),
    ("POST", "/api/images/1/objects", {"prompts": {"points": [[1, 2]], "labels": [1]}, "candidate": 3}, 422),
    ("POST", "/api/images/1/objects", {"prompts": {}, "candidate": 0}, 400),
    ("POST", "/api/images/1/objects", {"prompts": {"points": [[500, 2]], "labels": [1]}, "candidate": 0}, 400),
    ("POST", "/api/images/1/objects", {"rle": _rle(60, 80), "candidate": 0}, 400),
    ("PATCH", "/api/objects/1", {"label": "no version"}, 422),
    ("PATCH", "/api/objects/12345", {"version": 1, "label": "x"}, 404),
    ("DELETE", "/api/objects/12345", None, 404),
    ("POST", "/api/images/1/done", {"done": "maybe"}, 422),
    ("GET", "/api/export?format=xml", None, 422),
    ("PUT", "/api/images/1/predict", {}, 405),
    ("GET", "/api/nothing-here", None, 404),
]


@pytest.mark.parametrize("method, url, body, status", MALFORMED)
def test_malformed_requests_get_a_4xx_with_a_message(client, method, url, body, status):
    if isinstance(body, bytes):
        reply = client.request(method, url, content=body, headers={"Content-Type": "application/json"})
    else:
        reply = client.request(method, url, json=body)
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert detail and (isinstance(detail, str) or all("msg" in item for item in detail))
    json.dumps(detail)
