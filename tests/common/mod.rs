//! The test harness: [`TestApp`] serves the real `app()` on a random port, against the echo
//! provider or a [`FakeOpenAi`] upstream, and talks HTTP to it.
#![allow(
    dead_code,
    reason = "each test crate uses a different part of the harness"
)]

pub mod fake_openai;

use std::net::SocketAddr;
use std::time::Duration;

use agent_api::config::ProviderKind;
use agent_api::{AppState, Config};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;

#[allow(unused_imports, reason = "not every test crate uses both")]
pub use fake_openai::{Behaviour, FakeOpenAi};

pub struct TestApp {
    pub addr: SocketAddr,
    pub url: String,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

/// A config pointing at the fake upstream.
pub fn config_for(fake: &FakeOpenAi) -> Config {
    let mut c = Config::for_tests();
    c.provider = ProviderKind::OpenAi;
    c.openai_base_url = fake.url.clone();
    c.openai_api_key = Some(agent_api::config::Secret::new("sk-test-secret-key"));
    c
}

impl TestApp {
    /// The echo provider, test defaults, then `f`.
    pub async fn echo(f: impl FnOnce(&mut Config)) -> Self {
        let mut c = Config::for_tests();
        f(&mut c);
        Self::spawn(c).await
    }

    /// The fake upstream, test defaults, then `f`.
    pub async fn with_fake(fake: &FakeOpenAi, f: impl FnOnce(&mut Config)) -> Self {
        let mut c = config_for(fake);
        f(&mut c);
        Self::spawn(c).await
    }

    pub async fn spawn(config: Config) -> Self {
        let state = AppState::build(config).expect("state");
        let listener = agent_api::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let serve_state = state.clone();
        #[expect(
            clippy::disallowed_methods,
            reason = "the test server runs beside the test"
        )]
        tokio::spawn(async move {
            let _ = agent_api::serve(listener, serve_state, async move {
                let _ = stop_rx.await;
            })
            .await;
            let _ = done_tx.send(());
        });
        Self {
            addr,
            url: format!("http://{addr}"),
            state,
            client: client(),
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{}", self.url, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(res).await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{}", self.url, path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(res).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .unwrap();
        answer(res).await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        let res = self.client.get(format!("{}/metrics", self.url)).send();
        res.await.unwrap().text().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .delete(format!("{}{}", self.url, path))
            .send()
            .await
            .unwrap();
        answer(res).await
    }

    /// Polls a task until it is final (or fails the test after `secs`).
    pub async fn wait_task(&self, id: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, body) = self.get(&format!("/task/{id}")).await;
            assert_eq!(status, 200, "{body}");
            let s = body["status"].as_str().unwrap().to_owned();
            if ["completed", "failed", "cancelled"].contains(&s.as_str()) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} still {s} after {secs}s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server and waits until `serve` returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A response's status and JSON body (`null` when the body is not JSON).
pub async fn answer(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An HTTP client for tests (with the TLS provider installed that reqwest needs).
pub fn client() -> reqwest::Client {
    agent_api::llm::openai::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    /// Comment lines seen before this event (keep-alives).
    pub comments: usize,
}

/// Reads an SSE body into events, with the time each arrived (since the call).
/// The text of a stream's `{"content"}` frames, joined (other frames skipped).
pub fn content_of(events: &[(Duration, SseEvent)]) -> String {
    events
        .iter()
        .filter_map(|(_, e)| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| v["content"].as_str().map(str::to_owned))
        .collect()
}

pub async fn read_sse(res: reqwest::Response) -> Vec<(Duration, SseEvent)> {
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut current = SseEvent::default();
    let mut body = res.bytes_stream();
    while let Some(Ok(bytes)) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(pos) = buf.find('\n') {
            let line = buf[..pos].trim_end_matches('\r').to_owned();
            buf.drain(..=pos);
            if line.is_empty() {
                if !current.data.is_empty() || current.event.is_some() {
                    out.push((started.elapsed(), std::mem::take(&mut current)));
                }
            } else if line.starts_with(':') {
                current.comments += 1;
            } else if let Some(v) = line.strip_prefix("data:") {
                if !current.data.is_empty() {
                    current.data.push('\n');
                }
                current.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if let Some(v) = line.strip_prefix("event:") {
                current.event = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id:") {
                current.id = Some(v.trim().to_owned());
            }
        }
    }
    out
}

/// The real binary as a child process, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts the binary with a clean environment plus `envs`, on a free port, and waits until
    /// it listens.
    pub fn start(envs: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-api"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .envs(envs.iter().copied())
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            let v: Value = serde_json::from_str(&line).expect("every log line is JSON");
            if let Some(rest) = v["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("listening on "))
            {
                break rest.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, url }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// `kill -9`: no chance to clean up.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    #[expect(clippy::disallowed_methods, reason = "tests choose their Redis")]
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A TCP port free at the moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server on a free port, so that restarting it disturbs no other test.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    /// The URL of its database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -STOP` / `kill -CONT`: a Redis that hangs, with its connections open.
    pub fn pause(&self, paused: bool) {
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let signal = if paused { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
