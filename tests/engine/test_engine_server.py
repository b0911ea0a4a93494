"""``segany serve`` as a real process: parallel clients lose no write; kill -9 keeps what was accepted."""

from __future__ import annotations

import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from segany.engine.store import AnnotationStore
from segany.masks import decode_rle, encode_rle


def square(height: int, width: int, index: int) -> dict:
    mask = np.zeros((height, width), bool)
    row, col = divmod(index, width // 2)
    mask[row % height, 2 * col: 2 * col + 2] = True
    return encode_rle(mask)


def test_parallel_clients_then_kill_9_loses_nothing_accepted(server, tmp_path):
    running = server()
    images = httpx.get(f"{running.url}/api/images").json()["images"]
    target = next(image for image in images if image["path"] == "a.png")
    per_client = 15

    def annotate(client_index: int) -> dict[int, int]:
        """Accept ``per_client`` objects; returns {object id: index of its mask}."""
        ids = {}
        with httpx.Client(base_url=running.url, timeout=30) as http:
            for index in range(client_index * per_client, (client_index + 1) * per_client):
                if index % 5 == 0:  # clicks interleaved with writes, as in real use
                    assert http.post(f"/api/images/{target['id']}/predict",
                                     json={"points": [[10 + index, 20]], "labels": [1]}).status_code == 200
                reply = http.post(f"/api/images/{target['id']}/objects", json={
                    "rle": square(60, 80, index), "label": f"object {index}", "seconds": 1.0,
                })
                assert reply.status_code == 201, reply.text
                ids[reply.json()["id"]] = index
        return ids

    with ThreadPoolExecutor(2) as pool:
        accepted = {object_id: index for ids in pool.map(annotate, range(2)) for object_id, index in ids.items()}

    # both clients edit one object from the same version: exactly one edit wins, the other is told
    shared = min(accepted)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(
            lambda label: httpx.patch(f"{running.url}/api/objects/{shared}", json={"version": 1, "label": label}),
            ["first", "second"],
        ))
    assert sorted(reply.status_code for reply in replies) == [200, 409]
    winner = next(reply.json()["label"] for reply in replies if reply.status_code == 200)

    running.process.send_signal(signal.SIGKILL)
    running.process.wait(timeout=10)

    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {record.id: record for record in AnnotationStore(tmp_path / "db.sqlite").objects(target["id"])}
    assert sorted(stored) == sorted(accepted) and len(accepted) == 2 * per_client
    assert stored[shared].label == winner
    for record in stored.values():
        assert np.array_equal(decode_rle(record.rle), decode_rle(square(60, 80, accepted[record.id])))

    restarted = server()  # and the server comes back with everything
    assert httpx.get(f"{restarted.url}/api/images/{target['id']}").json()["image"]["objects"] == 2 * per_client


def test_a_chunked_upload_over_the_limit_is_refused_by_the_real_server(server):
    running = server("--max-request-mb", "0.01")

    def body():
        for _ in range(40):
            yield b" " * 1000

    reply = httpx.post(f"{running.url}/api/images/1/predict", content=body(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert httpx.post(f"{running.url}/api/images/1/predict", json={"points": [[1, 1]], "labels": [1]}).status_code == 200
