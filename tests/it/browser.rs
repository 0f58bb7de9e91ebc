//! The demo page in real headless Chromium: two tabs chat through an in-process `serve`.
//!
//! Drives `chromedriver` (started on port 0; it prints the port it got) over its W3C WebDriver
//! HTTP API with the tests' own small HTTP client (no extra dependency). Needs the Debian packages `chromium` and `chromium-driver` (installed by
//! .ci/run); without them this test FAILS with a message saying so — it never skips.
//!
//! The page's protocol code is linkcast.js (clients/js/, served at `/linkcast.js`); the page
//! exposes `chat` and `onServer` for these tests.
//! Steps: both tabs pick a name and join a room (through locate + WebSocket); each sends a
//! line, both see both lines with seq and sender; then tab A's socket is dropped, tab B sends
//! while A is away, and A — after reconnecting with `since` and the room's `epoch` — shows every
//! line exactly once; every publish (sent with an id) is acknowledged. Then refusals and a reset
//! are handed to tab A's message handler (what its Link says when it lost its hub, or when the
//! room's history was lost under a live member): a publish refused with 503 + `retry_after_ms` is
//! sent again, the same text with the same id, and shown once; a refused join is sent again with
//! the page's position (since, epoch); a `reset` shows "room history was reset" and the new
//! epoch's seq 1, not dropped as already seen.
//! A screenshot of tab A is written to `$CARGO_TARGET_TMPDIR/browser-chat.png`. A third test
//! checks the live viewer count in the header and what a tab kicked by an operator shows.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use linkcast::config::Config;
use serde_json::{json, Value};

use crate::support::http::{request, try_get};
use crate::support::{eventually, local, start_serve, STEP};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()).map(|p| p.display().to_string())
    })
}

struct WebDriver {
    addr: SocketAddr,
    child: Child,
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl WebDriver {
    /// Starts chromedriver on port 0 and reads the port it got from its first lines of output
    /// ("ChromeDriver was started successfully on port N."). A chromedriver that exits before
    /// saying so (seen once in a full CI run, on a loaded machine) is started once more; the
    /// second failure fails the test with everything it printed.
    async fn start(chromedriver: &str) -> WebDriver {
        match Self::try_start(chromedriver).await {
            Ok(driver) => driver,
            Err(output) => {
                eprintln!("chromedriver exited before listening, starting it again; it printed:\n{output}");
                Self::try_start(chromedriver)
                    .await
                    .unwrap_or_else(|output| panic!("chromedriver did not say which port it listens on; it printed:\n{output}"))
            }
        }
    }

    /// One chromedriver start: the driver, or what chromedriver printed before it exited.
    async fn try_start(chromedriver: &str) -> Result<WebDriver, String> {
        let mut child = Command::new(chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let mut seen = Vec::new();
            let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                let port = line.split_once("started successfully on port ").and_then(|(_, rest)| rest.trim_end_matches('.').trim().parse::<u16>().ok());
                seen.push(line);
                port
            });
            // Keep draining its output so chromedriver never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            port.ok_or_else(|| seen.join("\n"))
        });
        // Built before waiting, so a failing test still kills chromedriver (Drop).
        let mut driver = WebDriver { addr: local(0), child };
        let port = tokio::time::timeout(STEP, port).await.expect("chromedriver starts in time").expect("reader")?;
        driver.addr = local(port);
        Ok(driver)
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" { Vec::new() } else { body.to_string().into_bytes() };
        let res = request(self.addr, method, path, &[("content-type", "application/json")], &body)
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let value = res.json();
        assert_eq!(res.status, 200, "webdriver {method} {path}: {value}");
        value["value"].clone()
    }
}

struct Tab<'a> {
    driver: &'a WebDriver,
    session: String,
    /// Chromium's profile dir, removed once the session is closed.
    profile: std::path::PathBuf,
}

impl Tab<'_> {
    async fn open<'d>(driver: &'d WebDriver, chromium: &str) -> Tab<'d> {
        Tab::open_with(driver, chromium, &[]).await
    }

    /// A tab of a Chromium started with `extra` arguments besides the usual headless ones.
    async fn open_with<'d>(driver: &'d WebDriver, chromium: &str, extra: &[&str]) -> Tab<'d> {
        let profile = std::env::temp_dir().join(format!("linkcast-browser-{}-{}", std::process::id(), fastrand_suffix()));
        let mut args = vec![
            "--headless".to_owned(), "--no-sandbox".into(), "--disable-gpu".into(), "--disable-dev-shm-usage".into(),
            "--disable-quic".into(), "--no-first-run".into(), "--disable-background-networking".into(),
            "--disable-component-update".into(), "--disable-sync".into(), "--window-size=1000,700".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        }}});
        let created = driver.call("POST", "/session", caps).await;
        let session = created["sessionId"].as_str().expect("session id").to_owned();
        Tab { driver, session, profile }
    }

    async fn go(&self, url: &str) {
        self.driver.call("POST", &format!("/session/{}/url", self.session), json!({"url": url})).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self.driver.call("POST", &format!("/session/{}/element", self.session), json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("element {css}: {found}")).to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.driver.call("POST", &format!("/session/{}/element/{id}/clear", self.session), json!({})).await;
        self.driver.call("POST", &format!("/session/{}/element/{id}/value", self.session), json!({"text": text})).await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.driver.call("POST", &format!("/session/{}/element/{id}/click", self.session), json!({})).await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.driver.call("POST", &format!("/session/{}/execute/sync", self.session), json!({"script": script, "args": []})).await
    }

    /// Waits (bounded) until `script` returns `want`.
    async fn wait_for(&self, script: &str, want: Value, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.eval(script).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The chat lines shown: (seq, name, text).
    async fn lines(&self) -> Vec<(u64, String, String)> {
        let script = "return [...document.querySelectorAll('#messages li.msg')].map(li => \
                      [Number(li.dataset.seq), li.querySelector('.who').textContent, li.querySelector('.text').textContent]);";
        let value = self.eval(script).await;
        value
            .as_array()
            .expect("array")
            .iter()
            .map(|l| (l[0].as_u64().unwrap_or(0), l[1].as_str().unwrap_or("").to_owned(), l[2].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    async fn join(&self, page: &str, name: &str, room: &str) {
        self.go(page).await;
        self.type_into("#name", name).await;
        self.type_into("#room", room).await;
        self.click("#join").await;
        self.wait_for("return document.getElementById('state').textContent;", json!("connected"), "connected").await;
    }

    async fn say(&self, text: &str) {
        self.type_into("#text", text).await;
        self.click("#send").await;
    }

    async fn close(self) {
        // chromedriver answers once Chromium has quit: its profile can go.
        self.driver.call("DELETE", &format!("/session/{}", self.session), json!({})).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Chromium and chromedriver, or a failure saying which Debian package is missing.
fn browser_programs() -> (String, String) {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).unwrap_or_else(|| {
        panic!("this test needs headless Chromium: install the Debian packages `chromium` and `chromium-driver`")
    });
    let chromedriver = find_program(&["chromedriver"]).unwrap_or_else(|| {
        panic!("this test needs chromedriver: install the Debian package `chromium-driver`")
    });
    (chromium, chromedriver)
}

/// The demo page of a secured `serve` over `https://` and `wss://` (the test's own CA; Chromium
/// started with `--ignore-certificate-errors`), the user's token in the page URL: locate and the
/// room read carry it as `Authorization: Bearer`, the socket in `?token=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_chats_over_https_and_wss_with_a_token() {
    let (chromium, chromedriver) = browser_programs();
    let pki = crate::support::pki::Pki::new("browser");
    pki.issue("server");
    let mut config = Config::default();
    config.auth.jwt_secret = "browser-secret".into();
    config.auth.api_keys = vec!["browser-key".into()];
    config.tls.cert_file = Some(pki.path("server.pem"));
    config.tls.key_file = Some(pki.path("server.key"));
    let serve = start_serve(config, false).await;
    let claims = linkcast_core::auth::Claims {
        sub: "carol".into(),
        exp: crate::support::an_hour_from_now(),
        rooms: vec!["tls-room".into()],
        iat: None,
    };
    let token = linkcast_core::auth::sign(&claims, "browser-secret");
    let page = format!("https://{}/?token={token}", serve.http_addr());

    let driver = WebDriver::start(&chromedriver).await;
    eventually(STEP, "chromedriver becomes ready", || async {
        try_get(driver.addr, "/status").await.filter(|r| r.json()["value"]["ready"] == true)
    })
    .await;
    let carol = Tab::open_with(&driver, &chromium, &["--ignore-certificate-errors"]).await;
    carol.join(&page, "carol", "tls-room").await;
    let url = carol.eval("return chat.socket.url;").await;
    assert!(url.as_str().is_some_and(|u| u.starts_with("wss://")), "the page connected over wss: {url}");
    carol.say("over tls").await;
    let count = "return document.querySelectorAll('#messages li.msg').length;";
    carol.wait_for(count, json!(1), "carol sees her line").await;
    let mut api = linkcast::client::http::HttpApi::with_trust(&format!("https://{}", serve.http_addr()), Some("browser-key".into()), pki.trust())
        .expect("api");
    assert_eq!(api.publish("tls-room", "\"from the backend\"".into(), None).await.expect("https publish"), 2);
    carol.wait_for(count, json!(2), "carol sees the backend's line").await;
    let lines = carol.lines().await;
    assert_eq!(lines, vec![(1, "carol".to_owned(), "over tls".to_owned()), (2, "server".to_owned(), "from the backend".to_owned())]);
    carol.close().await;
    drop(driver);
    serve.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_chat_through_serve_and_resume_after_a_drop() {
    let (chromium, chromedriver) = browser_programs();

    let serve = start_serve(Config::default(), false).await;
    let page = format!("http://{}/", serve.http_addr());

    let driver = WebDriver::start(&chromedriver).await;
    eventually(STEP, "chromedriver becomes ready", || async {
        try_get(driver.addr, "/status").await.filter(|r| r.json()["value"]["ready"] == true)
    })
    .await;

    let alice = Tab::open(&driver, &chromium).await;
    let bob = Tab::open(&driver, &chromium).await;
    alice.join(&page, "alice", "browser-room").await;
    bob.join(&page, "bob", "browser-room").await;
    // The page speaks the protocol through linkcast.js (GET /linkcast.js), not inline code.
    let library = alice.eval("return [chat.client.constructor.name, [...document.scripts].map(s => s.type + ' ' + s.text).join('')];").await;
    assert_eq!(library[0], "LinkcastClient", "{library}");
    assert!(library[1].as_str().is_some_and(|s| s.starts_with("module") && s.contains("from \"/linkcast.js\"")), "{library}");

    alice.say("hello from alice").await;
    let count = "return document.querySelectorAll('#messages li.msg').length;";
    bob.wait_for(count, json!(1), "bob sees alice").await;
    bob.say("hi alice").await;
    alice.wait_for(count, json!(2), "alice sees bob").await;
    bob.wait_for(count, json!(2), "bob sees his own line").await;
    let expected = vec![
        (1, "alice".to_owned(), "hello from alice".to_owned()),
        (2, "bob".to_owned(), "hi alice".to_owned()),
    ];
    assert_eq!(alice.lines().await, expected);
    assert_eq!(bob.lines().await, expected);

    // Drop alice's socket; bob talks while she is away; she resumes with `since`.
    alice.eval("chat.socket.close(); return true;").await;
    alice.wait_for("return document.getElementById('state').textContent;", json!("reconnecting"), "alice noticed the drop").await;
    bob.say("are you there?").await;
    bob.say("you missed this").await;
    alice.wait_for("return document.getElementById('state').textContent;", json!("connected"), "alice reconnected").await;
    alice.wait_for(count, json!(4), "alice caught up").await;
    bob.wait_for(count, json!(4), "bob has all").await;
    let lines = alice.lines().await;
    assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2, 3, 4], "no line lost or doubled: {lines:?}");
    assert_eq!(lines[3].2, "you missed this");
    assert_eq!(bob.lines().await, lines);

    let shot = driver.call("GET", &format!("/session/{}/screenshot", alice.session), json!({})).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap_or("")).expect("base64 png");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-chat.png");
    std::fs::write(&path, &png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");

    // The page keeps the room's epoch (16 hex digits, as a string) next to its last seq, and
    // every publish it sent (with an id) was acknowledged.
    let epoch = alice.eval("return chat.epoch;").await;
    assert!(epoch.as_str().is_some_and(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit())), "epoch {epoch}");
    alice.wait_for("return chat.pending.size;", json!(0), "alice's publish acked").await;
    bob.wait_for("return chat.pending.size;", json!(0), "bob's publishes acked").await;

    // Record what alice's page sends; hold back its next publish as a Link without a hub would.
    alice
        .eval("window.sent = []; const ws = chat.socket, send = ws.send.bind(ws); \
               ws.send = (t) => { sent.push(t); if (sent.length > 1) send(t); }; return true;")
        .await;
    alice.say("sent twice, shown once").await;
    alice.wait_for("return sent.length;", json!(1), "publish recorded").await;
    let refuse = r#"const id = JSON.parse(sent[0]).id;
                    onServer({data: JSON.stringify({op: "error", code: 503, reason: "hub connection lost",
                                                    room: chat.room, id, retry_after_ms: 50})});
                    return typeof id;"#;
    assert_eq!(alice.eval(refuse).await, json!("string"), "publish ids are strings unique to the page load");
    alice.wait_for("return sent.length;", json!(2), "publish sent again").await;
    assert_eq!(alice.eval("return sent[0] === sent[1];").await, json!(true), "same text, same id");
    alice.wait_for(count, json!(5), "alice sees her line once").await;
    bob.wait_for(count, json!(5), "bob sees it once").await;
    alice.wait_for("return chat.pending.size;", json!(0), "the retried publish acked").await;
    // A join refused the same way is sent again with the page's position.
    let refuse_join = r#"onServer({data: JSON.stringify({op: "error", code: 503, reason: "hub unavailable",
                                                         room: chat.room, retry_after_ms: 50})});
                         return true;"#;
    alice.eval(refuse_join).await;
    alice.wait_for("return sent.length;", json!(3), "join sent again").await;
    let rejoin = alice.eval("return JSON.parse(sent[2]);").await;
    assert_eq!(rejoin, json!({"op": "join", "room": "browser-room", "since": 5, "epoch": epoch}));
    // A reset: position forgotten, the new epoch's messages shown from seq 1.
    let reset = r#"onServer({data: JSON.stringify({op: "reset", room: chat.room, epoch: "00000000000000aa", last_seq: 1})});
                   onServer({data: JSON.stringify({room: chat.room, seq: 1, from: "u", ts: 1000,
                                                   data: {name: "carol", text: "after the reset"}})});
                   return [chat.epoch, chat.lastSeq];"#;
    assert_eq!(alice.eval(reset).await, json!(["00000000000000aa", 1]));
    let notices = alice.eval("return [...document.querySelectorAll('#messages li.notice')].map(li => li.textContent);").await;
    assert!(notices.as_array().is_some_and(|n| n.iter().any(|t| t == "room history was reset")), "{notices}");
    let lines = alice.lines().await;
    assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 1], "{lines:?}");
    assert_eq!(lines[5].2, "after the reset");

    alice.close().await;
    bob.close().await;
    drop(driver);
    serve.shutdown().await;
}

/// The demo page shows its room's live viewer count (`presence`), and a tab whose user an
/// operator kicks through the admin API shows the operator's reason and stays disconnected
/// (close codes 4000–4099 mean "do not reconnect"), while the other tab's count drops to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_counts_viewers_and_a_kicked_tab_shows_why() {
    let (chromium, chromedriver) = browser_programs();
    let mut config = Config::default();
    config.auth.jwt_secret = "demo-secret".into();
    config.auth.keys = vec![linkcast::config::ApiKey { key: "ops-key".into(), scopes: vec![linkcast::config::Scope::Admin] }];
    let serve = start_serve(config, false).await;
    let token = |sub: &str| {
        let claims: linkcast_core::auth::Claims =
            serde_json::from_value(json!({"sub": sub, "exp": crate::support::an_hour_from_now(), "rooms": ["show"]})).expect("claims");
        linkcast_core::auth::sign(&claims, "demo-secret")
    };
    let page = |sub: &str| format!("http://{}/?token={}", serve.http_addr(), token(sub));

    let driver = WebDriver::start(&chromedriver).await;
    eventually(STEP, "chromedriver becomes ready", || async {
        try_get(driver.addr, "/status").await.filter(|r| r.json()["value"]["ready"] == true)
    })
    .await;
    let dave = Tab::open(&driver, &chromium).await;
    let erin = Tab::open(&driver, &chromium).await;
    dave.join(&page("dave"), "dave", "show").await;
    erin.join(&page("erin"), "erin", "show").await;
    let viewers = "return document.getElementById('viewers').textContent;";
    dave.wait_for(viewers, json!("2 watching"), "dave sees two viewers").await;
    erin.wait_for(viewers, json!("2 watching"), "erin sees two viewers").await;

    let kick = request(
        serve.http_addr(),
        "POST",
        "/v1/users/erin/disconnect",
        &[("authorization", "Bearer ops-key"), ("content-type", "application/json")],
        br#"{"reason":"spamming the chat"}"#,
    )
    .await
    .expect("kick request");
    assert_eq!(kick.status, 200, "kick: {}", kick.text());
    let state = "return document.getElementById('state').textContent;";
    erin.wait_for(state, json!("disconnected"), "erin's page ends its session").await;
    let notices = "return [...document.querySelectorAll('#messages li.notice')].map(li => li.textContent);";
    let shown = erin.eval(notices).await;
    assert!(
        shown.as_array().is_some_and(|n| n.iter().any(|t| t.as_str().is_some_and(|t| t.contains("spamming the chat") && t.contains("4000")))),
        "erin sees the operator's reason and the close code: {shown}"
    );
    dave.wait_for(viewers, json!("1 watching"), "dave's count drops to one").await;
    // A kicked page does not come back by itself: still closed well after any backoff would fire.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(erin.eval(state).await, json!("disconnected"));
    assert_eq!(erin.eval("return chat.socket === null && chat.wanted === false;").await, json!(true));

    dave.close().await;
    erin.close().await;
    drop(driver);
    serve.shutdown().await;
}
