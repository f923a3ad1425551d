//! MCP servers this project did not write, installed from package registries by
//! `tests/mcp/setup.sh` (which `scripts/test` runs): `mcp-server-time` (PyPI) as a stdio child,
//! and `@modelcontextprotocol/server-everything` (npm) over Streamable HTTP. The loop runs
//! offline with the `echo` provider, which calls tools named in `[tool:NAME {args}]`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestApp, free_port};
use serde_json::{Value, json};

fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("MCP_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcp-tools"));
    assert!(
        dir.join("venv/bin/python").exists(),
        "the MCP test servers are not installed: run `bash tests/mcp/setup.sh` (scripts/test does)"
    );
    dir
}

/// The `[mcp.time]` table: mcp-server-time under a marker that finds its process.
fn time_server(marker: &str) -> String {
    let python = tools_dir().join("venv/bin/python");
    format!(
        r#"
[mcp.time]
command = "{}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
env = {{ AGENT_API_TEST_MARKER = "{marker}" }}
allowed_tools = ["get_current_time"]
"#,
        python.display()
    )
}

fn with_agents(c: &mut agent_api::Config, text: &str) {
    c.agents = Arc::new(c.parse_agents(text, "agents.toml", &|_| None).unwrap());
}

/// The pids of processes whose environment holds the marker.
fn marked(marker: &str) -> Vec<u32> {
    let needle = format!("AGENT_API_TEST_MARKER={marker}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

async fn wait_ready(app: &TestApp, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = app.get("/ready").await;
        if status == 200 || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn call(app: &TestApp, agent: &str, tool: &str, args: Value) -> Value {
    let message = format!("[tool:{tool} {args}]");
    let (status, body) = app
        .post("/chat", json!({"message": message, "agent": agent}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["tool_calls"][0].clone()
}

#[tokio::test]
async fn a_published_stdio_server_answers_through_the_loop() {
    let marker = uuid::Uuid::new_v4().to_string();
    let file = format!(
        "{}\n[agents.clock]\ntools = [\"time/*\"]\n",
        time_server(&marker)
    );
    let app = TestApp::echo(|c| with_agents(c, &file)).await;
    let ready = wait_ready(&app, 30).await;
    assert_eq!(ready["mcp"]["time"], "ok", "{ready}");
    // Its tools as it lists them: the model-visible name, the inputSchema as the parameters.
    let (_, agent) = app.get("/agents/clock").await;
    assert_eq!(agent["tools"][0]["name"], "time__get_current_time");
    assert_eq!(agent["tools"][0]["source"], "mcp:time");
    assert!(
        agent["tools"][0]["parameters"]["properties"]["timezone"].is_object(),
        "{agent}"
    );
    let done = call(
        &app,
        "clock",
        "time__get_current_time",
        json!({"timezone": "UTC"}),
    )
    .await;
    let result: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["timezone"], "UTC", "{done}");
    assert!(result["datetime"].as_str().unwrap().contains('T'));
    // Arguments that do not match its schema never reach it.
    let bad = call(
        &app,
        "clock",
        "time__get_current_time",
        json!({"timezone": 5}),
    )
    .await;
    assert!(
        bad["error"].as_str().unwrap().contains("parameters"),
        "{bad}"
    );
    // A timezone it rejects: its isError result, as an error for the model.
    let refused = call(
        &app,
        "clock",
        "time__get_current_time",
        json!({"timezone": "Mars/Olympus"}),
    )
    .await;
    assert!(refused["error"].is_string(), "{refused}");
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(marked(&marker).is_empty(), "no child is left behind");
}

#[tokio::test]
async fn a_child_that_dies_is_restarted_and_meanwhile_answers_with_an_error() {
    let marker = uuid::Uuid::new_v4().to_string();
    let file = format!(
        "{}\n[agents.clock]\ntools = [\"time/get_current_time\"]\n",
        time_server(&marker)
    );
    let app = TestApp::echo(|c| with_agents(c, &file)).await;
    assert_eq!(wait_ready(&app, 30).await["mcp"]["time"], "ok");
    let pids = marked(&marker);
    assert_eq!(pids.len(), 1, "{pids:?}");
    std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let down = call(
        &app,
        "clock",
        "time__get_current_time",
        json!({"timezone": "UTC"}),
    )
    .await;
    assert!(
        down["error"].as_str().unwrap().contains("not available"),
        "{down}"
    );
    // Restarted with backoff: the tool answers again, from a new process.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = call(
            &app,
            "clock",
            "time__get_current_time",
            json!({"timezone": "UTC"}),
        )
        .await;
        if again["result"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {again}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = marked(&marker);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], pids[0]);
    app.stop().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_is_reported_and_its_tools_answer_with_an_error() {
    let file = r#"
[mcp.broken]
command = "/nonexistent/mcp-server"
[agents.a]
tools = ["broken/anything"]
"#;
    let app = TestApp::echo(|c| with_agents(c, file)).await;
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(ready["mcp"]["broken"], "unavailable", "{ready}");
    assert_eq!(ready["status"], "not_ready");
    let done = call(&app, "a", "broken__anything", json!({})).await;
    assert!(
        done["error"].as_str().unwrap().contains("not available"),
        "{done}"
    );
}

#[tokio::test]
async fn a_tool_list_change_is_heard_and_the_new_tool_offered() {
    let python = tools_dir().join("venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/changing_server.py");
    let file = format!(
        "[mcp.chg]\ncommand = \"{}\"\nargs = [\"{}\"]\n[agents.c]\ntools = [\"chg/*\"]\n",
        python.display(),
        script.display()
    );
    let app = TestApp::echo(|c| with_agents(c, &file)).await;
    assert_eq!(wait_ready(&app, 30).await["mcp"]["chg"], "ok");
    let names = |agent: Value| -> Vec<String> {
        agent["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(app.get("/agents/c").await.1), ["chg__add_tool"]);
    let added = call(&app, "c", "chg__add_tool", json!({})).await;
    assert_eq!(added["result"], "added", "{added}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(app.get("/agents/c").await.1).len() < 2 {
        assert!(Instant::now() < deadline, "the new tool was never listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = call(&app, "c", "chg__late", json!({})).await;
    assert_eq!(late["result"], "late tool answered", "{late}");
    app.stop().await;
}

/// server-everything over Streamable HTTP on a free port; killed when dropped.
struct Everything(std::process::Child, u16);

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn everything() -> Everything {
    let js =
        tools_dir().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let port = free_port();
    let child = std::process::Command::new("node")
        .arg(js)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "server-everything did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Everything(child, port)
}

#[tokio::test]
async fn a_published_streamable_http_server_answers_through_the_loop() {
    let server = everything().await;
    let file = format!(
        r#"
[mcp.every]
url = "http://127.0.0.1:{}/mcp"
headers = {{ X-Test = "yes" }}
allowed_tools = ["echo", "get-sum"]
[agents.e]
tools = ["every/*"]
"#,
        server.1
    );
    let app = TestApp::echo(|c| with_agents(c, &file)).await;
    let ready = wait_ready(&app, 30).await;
    assert_eq!(ready["mcp"]["every"], "ok", "{ready}");
    let (_, agent) = app.get("/agents/e").await;
    let names: Vec<&str> = agent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "only the allowed tools: {names:?}");
    assert!(names.contains(&"every__echo") && names.contains(&"every__get-sum"));
    let done = call(
        &app,
        "e",
        "every__echo",
        json!({"message": "hello over http"}),
    )
    .await;
    assert!(
        done["result"].as_str().unwrap().contains("hello over http"),
        "{done}"
    );
    let sum = call(&app, "e", "every__get-sum", json!({"a": 2, "b": 3})).await;
    assert!(sum["result"].as_str().unwrap().contains('5'), "{sum}");
    // The server goes away: its tools answer with an error, the turn still succeeds.
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = call(&app, "e", "every__echo", json!({"message": "x"})).await;
        if gone["error"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "{gone}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}
