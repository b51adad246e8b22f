"""The status page, its JSON API and /metrics on a 3-host lab, and the page itself in
Debian's chromium (driven by playwright-core from tests/browser/)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshnet.lab import Lab
from tests.conftest import wait_for
from tests.lab.conftest import cluster_lab, unique_name
from tests.lab.helpers import meshnet

ROOT = Path(__file__).resolve().parents[2]
BROWSER = ROOT / "tests" / "browser"
SCREENSHOT = ROOT / "docs" / "status-page.png"


def _until(what: str, ok, timeout: float = 20.0, every: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = ok()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def lab3():
    with cluster_lab("st", 3, status_port_base=0) as lab:
        yield lab

def url(lab: Lab, k: int, path: str = "/") -> str:
    port = lab.status_ports()[k]
    assert isinstance(port, int), port
    return f"http://127.0.0.1:{port}{path}"


def overview(lab: Lab, k: int) -> dict:
    return httpx.get(url(lab, k, "/api/overview"), timeout=5).json()


def test_overview_and_local_api(lab3: Lab):
    o = _until("every tunnel fresh", lambda: (o := overview(lab3, 1)) and all(
        m["health"] in ("self", "fresh") for m in o["members"]) and len(o["members"]) == 3 and o)
    assert o["cluster"]["size"] == 3 and o["cluster"]["id"]
    assert {m["name"] for m in o["members"]} == {"h1", "h2", "h3"}
    peer = next(m for m in o["members"] if m["name"] == "h2")
    assert peer["transit_ip"] == "10.249.0.2" and peer["endpoint"] == "10.248.0.12:51820"
    assert peer["handshake_age"] is not None and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert o["node"]["backend"] == "userspace"
    assert any(e["kind"] == "join" for e in o["events"])
    # The same document on the unix socket, for `meshnet status`.
    local = lab3.client(1).get("/v1/overview")
    assert local["cluster"] == o["cluster"] and len(local["members"]) == 3
    # Every asset comes from the agent (no CDN).
    html = httpx.get(url(lab3, 1), timeout=5).text
    assert "/static/app.js" in html and "http" not in html.split("<body>")[0].replace("http-equiv", "")
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(url(lab3, 1, asset), timeout=5).status_code == 200


def test_metrics_parse(lab3: Lab):
    def scrape() -> dict:
        text = httpx.get(url(lab3, 2, "/metrics"), timeout=5).text
        return {f.name: f for f in text_string_to_metric_families(text)}

    # A handshake age exists once each peer has talked to h2 (the probes see to that).
    families = wait_for("h2 to have handshakes with h1 and h3", lambda: (f := scrape()) and len(
        f["meshnet_peer_handshake_age_seconds"].samples) == 2 and f)
    members = {s.labels["state"]: s.value for s in families["meshnet_members"].samples}
    assert members["active"] == 3
    ages = [s for s in families["meshnet_peer_handshake_age_seconds"].samples]
    assert {s.labels["peer"] for s in ages} == {"h1", "h3"} and all(s.value >= 0 for s in ages)
    rx = {s.labels["peer"]: s.value for s in families["meshnet_peer_receive_bytes"].samples}
    assert rx["h1"] > 0
    assert families["meshnet_peer_transmit_bytes"].type == "counter"
    sent = {s.labels["kind"]: s.value for s in families["meshnet_gossip_messages_sent"].samples}
    got = {s.labels["kind"]: s.value for s in families["meshnet_gossip_messages_received"].samples}
    assert sent["push"] + sent["sync"] > 0 and got["rows"] + got["sync"] > 0
    lag = {s.name: s.value for s in families["meshnet_replication_lag_seconds"].samples}
    assert lag["meshnet_replication_lag_seconds_count"] > 0
    assert "meshnet_network_endpoints" in families


def test_status_cli(lab3: Lab):
    out = meshnet(lab3, 1, "status")
    assert out.returncode == 0, out.stderr
    for name in ("h1", "h2", "h3", "Members", "Networks", "Recent events"):
        assert name in out.stdout
    js = meshnet(lab3, 1, "status", "--format", "json")
    assert json.loads(js.stdout)["cluster"]["size"] == 3


@pytest.mark.parametrize("addr", ["0.0.0.0:7947", "10.248.0.11:7947", "[::]:7947"])
def test_non_loopback_without_token_refused(tmp_path: Path, addr: str):
    out = subprocess.run([sys.executable, "-m", "meshnet", "--socket", str(tmp_path / "s.sock"), "agent",
                          "--state-dir", str(tmp_path), "--status-addr", addr],
                         capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a token" in lines[0] and "--status-token" in lines[0], out.stderr
    assert not (tmp_path / "meshnet.db").exists()  # refused before anything started


def test_token_required_off_loopback():
    lab = Lab(unique_name("st"))
    try:
        lab.up(1, agent_args=["--status-addr", "0.0.0.0:7947", "--status-token", "s3cret-t0ken"],
               status_port_base=0)
        base = url(lab, 1, "")
        with httpx.Client(base_url=base, timeout=5) as c:
            for path in ("/api/overview", "/metrics", "/api/events"):
                r = c.get(path)
                assert r.status_code == 401, (path, r.status_code)
            assert c.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/api/overview", headers={"Authorization": "Bearer s3cret-t0ken"}).status_code == 200
            assert c.get("/").status_code == 200  # the page (and its login form) is not secret
            r = c.get("/?token=nope", follow_redirects=False)
            assert r.status_code == 302 and "login=failed" in r.headers["location"]
        with httpx.Client(base_url=base, timeout=5) as c:  # the login form sets a cookie
            r = c.post("/login", data={"token": "s3cret-t0ken"}, follow_redirects=False)
            assert r.status_code == 303 and "meshnet_status" in r.headers["set-cookie"]
            assert "HttpOnly" in r.headers["set-cookie"]
            assert c.get("/api/overview").status_code == 200
            assert c.get("/metrics").status_code == 200
    finally:
        lab.down()


class Browser:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(BROWSER / "driver.mjs")], cwd=BROWSER,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self._read()
        assert hello.get("ready"), hello

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the browser driver exited ({self.proc.poll()})")
        return json.loads(line)

    def __call__(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        assert answer["ok"], answer
        return answer

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser():
    if not Path("/usr/bin/chromium").exists() or not (BROWSER / "node_modules" / "playwright-core").exists():
        pytest.fail("the browser test needs Debian's chromium and `npm ci` in tests/browser: "
                    "run scripts/setup --test")
    b = Browser()
    yield b
    b.close()


def test_page_in_chromium(lab3: Lab, browser: Browser):
    """Last in this module: it kills h3's agent."""
    c1, c2, c3 = (lab3.client(k) for k in (1, 2, 3))
    c1.post("/v1/networks", {"name": "appnet"})
    c2.post("/v1/endpoints", {"network": "appnet", "name": "web1"})
    c1.post("/v1/services", {"name": "echo", "networks": ["appnet"], "replicas": 1,
                             "command": ["sleep", "infinity"]})
    t0 = time.monotonic()
    loaded = browser("goto", url=url(lab3, 1))
    browser("wait", selector='#members tr[data-node="h3"][data-health="fresh"]', timeout=20000)
    browser("wait", selector='#networks tr[data-network="appnet"] [data-endpoint="web1"]', timeout=15000)
    browser("wait", selector='#mesh line.tunnel.fresh[data-node="h2"]')
    browser("wait", selector='#services tr[data-service="echo"][data-running="1"]', timeout=30000)
    first_render = time.monotonic() - t0
    assert loaded["ms"] < 1000, f"the page took {loaded['ms']} ms to load"
    navigations = loaded["navigations"]

    # Live: an endpoint added on h3 appears without a reload.
    c3.post("/v1/endpoints", {"network": "appnet", "name": "web2"})
    browser("wait", selector='#networks li[data-host="h3"] [data-endpoint="web2"]', timeout=10000)
    browser("wait", selector='#events tr[data-kind="endpoint-add"]', timeout=5000)
    # ... and a service scaling up.
    httpx.Client(transport=httpx.HTTPTransport(uds=str(lab3.socket(1))), base_url="http://meshnet",
                 timeout=30).patch("/v1/services/echo", json={"replicas": 2}).raise_for_status()
    browser("wait", selector='#services tr[data-service="echo"][data-running="2"]', timeout=30000)

    # An agent dies: h3's member turns dead on h1's page, still without a reload.
    killed = time.monotonic()
    lab3.stop_agent(3, signal.SIGKILL)
    browser("wait", selector='#members tr[data-node="h3"][data-health="dead"]', timeout=15000)
    browser("wait", selector='#mesh line.tunnel.dead[data-node="h3"]', timeout=5000)
    detected = time.monotonic() - killed
    answer = browser("eval", js="document.querySelector('#conn').textContent")
    assert answer["value"] == "live"
    assert answer["navigations"] == navigations, "the page reloaded"
    assert not answer["consoleErrors"], answer["consoleErrors"]
    time.sleep(2.5)  # one more update, so the events table shows the death too
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser("screenshot", path=str(SCREENSHOT))
    print(f"page load {loaded['ms']} ms, first full render {first_render:.1f} s, "
          f"h3's death shown after {detected:.1f} s")
    assert SCREENSHOT.stat().st_size > 10_000
