"""How the console and the API reference are served (the browser tests are
`test_console.py`): the page and its files with a strict CSP, the public path of
`MINIDEVIN_PUBLIC_URL`, nothing from another host, no file outside the package,
the WebSocket from the console's own origin."""

from __future__ import annotations

import re
from typing import Any

from http_helpers import expect_error, serve, sign_up
from scripted_provider import ScriptedOpenAIServer

from minidevin.http.console import CSP, WEB
from minidevin.runtime.settings import Settings


def check_csp(response: Any) -> str:
    policy = response.headers["Content-Security-Policy"]
    script = re.search(r"script-src ([^;]*)", policy)
    assert script is not None and script.group(1) == "'self'", policy  # nothing inline
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return str(policy)


async def test_the_console_page_and_files_are_served_with_a_strict_policy(
    scripted: ScriptedOpenAIServer, settings: Settings
) -> None:
    async with serve(settings, scripted) as client:
        page = await client.get("/")
        assert page.status == 200 and page.content_type == "text/html"
        assert check_csp(page) == CSP
        html = await page.text()
        assert '<base href="/">' in html
        assert "<script>" not in html and not re.search(r"\son[a-z]+\s*=", html)  # all in files
        files = [p for p in WEB.rglob("*") if p.is_file()]
        assert files, "the console's files"
        for path in files:
            name = path.relative_to(WEB).as_posix()
            if name == "index.html":
                continue
            answer = await client.get(f"/console/{name}")
            assert answer.status == 200, name
            check_csp(answer)
            if name.endswith(".js"):
                assert answer.content_type == "text/javascript"


async def test_nothing_comes_from_another_host() -> None:
    for path in WEB.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path
            assert "@import url(http" not in text and "fonts.googleapis" not in text, path


async def test_no_file_outside_the_console_is_served(
    scripted: ScriptedOpenAIServer, settings: Settings
) -> None:
    async with serve(settings, scripted) as client:
        for name in ("../http/console.py", "%2e%2e/http/console.py", "..%2fapi.py", "nope.js"):
            answer = await client.get(f"/console/{name}")
            assert answer.status == 404, name
        assert (await client.get("/docs-assets/../../../etc/passwd")).status == 404


async def test_behind_a_path_prefix_every_link_is_relative_to_it(
    scripted: ScriptedOpenAIServer, settings: Settings
) -> None:
    settings = settings.model_copy(update={"public_url": "https://example.com/tools/minidevin/"})
    async with serve(settings, scripted) as client:
        html = await (await client.get("/")).text()
        assert '<base href="/tools/minidevin/">' in html
        assert not re.search(r"(src|href)=\"/", html.replace('<base href="/tools', "")), html
        docs = await (await client.get("/api/docs")).text()
        assert '<base href="/tools/minidevin/">' in docs


async def test_the_api_reference_is_public_and_offline(
    scripted: ScriptedOpenAIServer, settings: Settings
) -> None:
    async with serve(settings, scripted) as client:
        docs = await client.get("/api/docs")
        assert docs.status == 200
        policy = check_csp(docs)
        assert "style-src 'self' 'unsafe-inline'" in policy  # (Swagger UI's style attributes)
        html = await docs.text()
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            answer = await client.get("/" + src)
            assert answer.status == 200, src
        init = await (await client.get("/docs-assets/minidevin-docs.js")).text()
        assert "api/openapi.json" in init and "validatorUrl: null" in init


async def test_the_websocket_accepts_the_consoles_own_origin_only(
    scripted: ScriptedOpenAIServer, settings: Settings, tmp_path: Any
) -> None:
    async with serve(settings, scripted) as client:
        user = await sign_up(client)
        own = f"http://{client.server.host}:{client.server.port}"
        url = "/ws/tasks/unknown?token=" + user.token
        refused = await client.get(url, headers={"Origin": "http://evil.example"})
        await expect_error(refused, 403, "FORBIDDEN")
        same = await client.get(url, headers={"Origin": own})
        await expect_error(same, 404, "NOT_FOUND")  # past the origin check: no such task
    public = settings.model_copy(update={"public_url": "https://devin.example.com/x"})
    async with serve(public, scripted) as client:
        user = await sign_up(client, "bea@example.com", "Bea")
        url = "/ws/tasks/unknown?token=" + user.token
        proxied = await client.get(url, headers={"Origin": "https://devin.example.com"})
        await expect_error(proxied, 404, "NOT_FOUND")
