//! The real binary: start-up refusal, and SIGTERM during an in-flight request, an open stream
//! and a running task (one shutdown budget).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Behaviour, FakeOpenAi};
use serde_json::json;

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-api"));
    // Start from a clean environment so that the developer's own settings do not leak in.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    cmd
}

#[test]
fn refuses_to_listen_openly_without_keys() {
    let out = binary()
        .env("HOST", "0.0.0.0")
        .env("PORT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("API_KEYS") && err.contains("ALLOW_NO_AUTH"),
        "{err}"
    );

    let out = binary()
        .env("UPSTREAM_TIMEOUT_SECS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UPSTREAM_TIMEOUT_SECS"));
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let mut server = common::ServerProcess::start(&[
        ("OPENAI_BASE_URL", &fake.url),
        ("OPENAI_API_KEY", "sk-test"),
    ]);
    let url = server.url.clone();
    let client = common::client();
    let pending = {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .post(format!("{url}/chat"))
                .json(&json!({"message": "slow one"}))
                .send()
                .await
        }
    };
    #[expect(
        clippy::disallowed_methods,
        reason = "the request runs beside the signal"
    )]
    let requester = tokio::task::spawn(pending);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = server.pid();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let res = requester
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["response"], "Hello from the fake upstream");
    // New connections are refused while it drains or after it stopped.
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(s) = server.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not exit within 5s of SIGTERM");
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(client.get(format!("{url}/health")).send().await.is_err());
}

/// Sends SIGTERM to `server`.
fn sigterm(server: &common::ServerProcess) {
    let pid = server.pid();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
}

/// Waits for the process to exit; how long it took.
async fn exited(mut server: common::ServerProcess, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        while started.elapsed() < within {
            if server.child.try_wait().unwrap().is_some() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not exit within {within:?} of SIGTERM");
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn sigterm_with_an_open_stream_and_a_running_task_takes_one_grace_in_all() {
    // A stream that would last 30 s, and a task whose model answers in 30 s.
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 100,
        chunk_delay: Duration::from_millis(300),
        unary_delay: Duration::from_secs(30),
        content: "word ".repeat(100),
        ..Default::default()
    })
    .await;
    let server = common::ServerProcess::start(&[
        ("OPENAI_BASE_URL", &fake.url),
        ("OPENAI_API_KEY", "sk-test"),
        ("SHUTDOWN_GRACE_SECS", "3"),
    ]);
    let client = common::client();
    let (status, task) = common::answer(
        client
            .post(format!("{}/task", server.url))
            .json(&json!({"prompt": "slow"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{task}");
    let stream = client
        .post(format!("{}/chat/stream", server.url))
        .json(&json!({"message": "long answer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    #[expect(
        clippy::disallowed_methods,
        reason = "the reader runs beside the signal"
    )]
    let reader = tokio::spawn(common::read_sse(stream));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&server);
    let took = exited(server, Duration::from_secs(10)).await;
    // One budget for everything (before: the grace for the connections, then again for the
    // tasks).
    assert!(took <= Duration::from_millis(3500), "{took:?}");
    let events = reader.await.unwrap();
    let (at, last) = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(
        data,
        json!({"detail": "server shutting down", "retryable": true})
    );
    // Within the grace, after the stream had its time.
    assert!(*at >= Duration::from_secs(2), "{at:?}");
    assert!(events.len() > 3, "the stream ran until the grace was over");
}

#[tokio::test]
async fn query_keys_never_reach_the_logs() {
    let secret = "qk-very-secret-value";
    let mut child = binary()
        .env("PORT", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .env("API_KEYS", format!("web={secret}"))
        .env("ECHO_DELAY_MS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(rest) = v["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("listening on "))
        {
            break rest.to_owned();
        }
    };
    let client = common::client();
    let res = client
        .get(format!("{addr}/chat/stream?message=hi&api_key={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.text().await;
    let res = client
        .get(format!("{addr}/conversations?api_key={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        401,
        "a query key is accepted only where browsers need it"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs: Vec<String> = rx.try_iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("answered") && l.contains(r#""path":"/chat/stream""#)),
        "the server logged the request whose key was in the query: {logs:?}"
    );
    for line in &logs {
        assert!(!line.contains(secret), "secret in a log line: {line}");
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!stderr.contains(secret));
}
