"""Model cards over HTTP: the API's Markdown (with a key) and the page (without), and the
clinician page's link from a result to its version's card."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from contracts.repository import MODEL_CARD_FILE
from serving.app import create_app
from serving.security import hash_key
from serving.settings import Settings
from tests.fixtures_serving import ROOT, assert_problem

KEY = "card-test-key-" + "k" * 30
CARD = """# Model card: skin_lesion version 1

Decision support, **not a medical device**.

| figure | value |
|---|---|
| balanced accuracy | 0.687 [0.637, 0.740] |

<script>alert("card")</script>
"""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    repo = tmp_path_factory.mktemp("cards")
    (repo / "skin_lesion" / "1").mkdir(parents=True)
    (repo / "skin_lesion" / "1" / MODEL_CARD_FILE).write_text(CARD)
    (repo / "skin_lesion" / "2").mkdir()  # exported without a card
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        triton = f"127.0.0.1:{s.getsockname()[1]}"  # down: cards need no model server
    settings = Settings(
        database_url=f"sqlite:///{repo / 'p.db'}",
        triton_url=triton,
        triton_timeout_s=1.0,
        api_key_hashes=[hash_key(KEY)],
        model_repository=repo,
        rules_path=ROOT / "configs/body_location_rules.yaml",
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_api_gives_the_card_as_markdown(client: TestClient) -> None:
    r = client.get("/v1/models/versions/1/card", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert r.text == CARD
    assert_problem(client.get("/v1/models/versions/1/card"), "unauthorized", 401)
    missing = client.get("/v1/models/versions/2/card", headers={"X-API-Key": KEY})
    assert "exported without a card" in assert_problem(missing, "not-found", 404)["detail"]
    absent = client.get("/v1/models/versions/9/card", headers={"X-API-Key": KEY})
    assert "no such version" in assert_problem(absent, "not-found", 404)["detail"]
    bad = client.get("/v1/models/versions/..%2F..%2Fetc/card", headers={"X-API-Key": KEY})
    assert bad.status_code in (404, 422)  # an int or nothing: no path from the request


def test_the_page_renders_the_card_for_people(client: TestClient) -> None:
    page = client.get("/model-cards/1")  # no key: a card holds no patient data
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<h1>Model card: skin_lesion version 1</h1>" in html
    assert "<strong>not a medical device</strong>" in html
    assert "<td>balanced accuracy</td>" in html and "<table>" in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html  # shown, not run
    missing = client.get("/model-cards/2")
    assert missing.status_code == 404 and "exported without a card" in missing.text
    assert client.get("/model-cards/0").status_code == 422
