"""The routes without Ray: a fake ingress behind create_app, through Starlette's TestClient."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from imagen_ray.config import ServeConfig
from imagen_ray.serve.api import create_app
from imagen_ray.serve.auth import token_digest
from imagen_ray.serve.problems import RequestProblem
from imagen_ray.serve.schemas import GeneratedImage, GenerateRequest, GenerateResponse

TOKEN = "t" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeIngress:
    def __init__(self, auth: bool, fail: BaseException | None = None) -> None:
        self.names = ["base", "sr64"]
        self.stage_sizes = [("base", 32), ("sr64", 64)]
        self.max_body_bytes = 4096
        self.token_digest = token_digest(TOKEN) if auth else None
        self.fail = fail
        self.seen: list[GenerateRequest] = []
        self.edits: list[dict[str, Any] | None] = []
        self.cfg = ServeConfig(max_upload_bytes=64 * 1024, max_upload_pixels=256 * 256)

    def models(self) -> dict[str, Any]:
        return {"stages": self.names}

    async def stats(self) -> dict[str, Any]:
        return {}

    async def generate(
        self, req: GenerateRequest, edit: dict[str, Any] | None = None
    ) -> GenerateResponse:
        self.seen.append(req)
        self.edits.append(edit)
        if self.fail is not None:
            raise self.fail
        images = [
            GeneratedImage(
                prompt=p, seed=i, width=1, height=1, format="png", truncated=False, image="AA=="
            )
            for i, p in enumerate(req.prompt_list())
        ]
        return GenerateResponse(images=images, settings={"until": req.until}, seconds=0.0)


def client(auth: bool = True, fail: BaseException | None = None) -> tuple[TestClient, Any]:
    fake = FakeIngress(auth, fail)
    return TestClient(create_app(fake), raise_server_exceptions=False), fake


@pytest.mark.parametrize("path", ["/v1/models", "/v1/stats", "/docs", "/openapi.json"])
def test_with_auth_on_every_api_route_and_the_docs_need_the_token(path: str) -> None:
    c, _ = client()
    assert c.get(path).status_code == 401
    assert c.get(path, headers={"Authorization": "Bearer " + "t" * 39}).status_code == 401
    assert c.get(path, headers=AUTH).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_with_auth_off_the_docs_are_open() -> None:
    c, _ = client(auth=False)
    assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_a_server_failure_is_a_500_of_that_request_alone_in_json() -> None:
    c, _ = client(fail=RuntimeError("stage replica died"))
    r = c.post("/v1/generate", json={"prompts": "a"}, headers=AUTH)
    assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
    r = c.post("/v1/images/generations", json={"prompt": "a"}, headers=AUTH)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"


def test_overload_is_a_503_with_retry_after() -> None:
    c, _ = client(fail=RequestProblem("the server is overloaded", 503, {"Retry-After": "2"}))
    r = c.post("/v1/generate", json={"prompts": "a"}, headers=AUTH)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"


def test_openai_route_translates_the_request_and_answers_in_openai_shapes() -> None:
    c, fake = client()
    body = {"prompt": "a red circle", "n": 2, "size": "32x32", "seed": 4, "model": "any"}
    r = c.post("/v1/images/generations", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [d["revised_prompt"] for d in r.json()["data"]] == ["a red circle"] * 2
    assert fake.seen[-1].until == "base" and fake.seen[-1].seed == 4
    r = c.post("/v1/images/generations", json={"prompt": "a", "size": "7x7"}, headers=AUTH)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "'7x7'" in err["message"]
    r = c.post("/v1/images/generations", json={"prompt": "a", "quality": "hd"}, headers=AUTH)
    assert r.status_code == 400 and "quality: unknown field" in r.json()["error"]["message"]
    r = c.post("/v1/images/generations", json={"prompt": "a"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_an_answer_naming_a_lone_surrogate_still_encodes() -> None:
    c, _ = client(fail=RequestProblem("prompts[0]: bad text \ud800"))
    r = c.post("/v1/generate", json={"prompts": "a"}, headers=AUTH)
    assert r.status_code == 422 and "\\ud800" in r.json()["detail"]
