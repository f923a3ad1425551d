//! Runs (API.md, "Runs: resumable streams"): every streamed turn and every task is a run whose
//! log can be replayed byte for byte, followed while it runs, cancelled, continued after its
//! client left, and which expires; an EventSource's reconnect never starts a new turn.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use agent_api::Config;
use agent_api::config::parse_api_keys;
use common::{Behaviour, FakeOpenAi, TestApp};
use futures::StreamExt;
use serde_json::{Value, json};

/// A slow stream: ten chunks, `gap` apart.
fn slow(gap: Duration) -> Behaviour {
    Behaviour {
        content: "one two three four five six seven eight nine ten".into(),
        chunks: 10,
        chunk_delay: gap,
        ..Default::default()
    }
}

fn keys(c: &mut Config) {
    c.api_keys = parse_api_keys(&["alice=key-a".into(), "bob=key-b".into()], "API_KEYS").unwrap();
}

/// One parsed SSE event (`id`, `event`, `data`) and its raw text.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
    raw: String,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads SSE frames from a response as they come (comments and id-only frames skipped).
struct Reader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Reader {
    fn new(res: reqwest::Response) -> Self {
        Self {
            body: res.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next frame with data; `None` at the end of the body.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut f = Frame {
                    id: None,
                    event: None,
                    data: String::new(),
                    raw: raw.clone(),
                };
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        f.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        f.event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        f.data.push_str(v);
                    }
                }
                if !f.data.is_empty() {
                    return Some(f);
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(15), self.body.next())
                .await
                .expect("a frame within 15 s")?
                .ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn rest(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            out.push(f);
        }
        out
    }
}

async fn stream(app: &TestApp, body: Value) -> reqwest::Response {
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res
}

fn run_id(res: &reqwest::Response) -> String {
    res.headers()["x-run-id"].to_str().unwrap().to_owned()
}

async fn events(app: &TestApp, run: &str, last: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(format!("{}/runs/{run}/events", app.url));
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

/// Polls `GET /runs/{id}` until its status is not `running`.
async fn ended(app: &TestApp, run: &str) -> Value {
    for _ in 0..200 {
        let (s, body) = app.get(&format!("/runs/{run}")).await;
        assert_eq!(s, 200, "{body}");
        if body["status"] != "running" {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {run} still running after 5 s");
}

#[tokio::test]
async fn a_stream_is_a_run_whose_log_replays_byte_for_byte() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(&app, json!({"message": "hi", "conversation_id": "r1"})).await;
    let run = run_id(&res);
    assert_eq!(run.len(), 32, "{run}");
    let first = Reader::new(res).rest().await;
    let done = first.last().unwrap().json();
    assert_eq!(done["done"], true);
    assert_eq!(done["run_id"], run.as_str());

    // From the start: the same frames, id, event and data, byte for byte.
    let res = events(&app, &run, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(run_id(&res), run);
    let replay = Reader::new(res).rest().await;
    assert_eq!(replay, first);
    // After a position: what came after it.
    let res = events(&app, &run, first[1].id.as_deref()).await;
    assert_eq!(Reader::new(res).rest().await, first[2..]);
    let res = app
        .client
        .get(format!("{}/runs/{run}/events", app.url))
        .query(&[("after", first[0].id.as_deref().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(Reader::new(res).rest().await, first[1..]);
    // At its terminal event: nothing more will come (204).
    let res = events(&app, &run, first.last().unwrap().id.as_deref()).await;
    assert_eq!(res.status(), 204);

    let (s, info) = app.get(&format!("/runs/{run}")).await;
    assert_eq!(s, 200);
    let mut keys: Vec<&str> = info
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent",
            "completed_at",
            "conversation_id",
            "created_at",
            "run_id",
            "status",
            "tokens_used"
        ]
    );
    assert_eq!(info["status"], "completed");
    assert_eq!(info["conversation_id"], "r1");
    assert_eq!(info["agent"], "default");
    assert_eq!(info["tokens_used"], done["tokens_used"]);
    assert!(info["completed_at"].is_string());
    // Deleting an ended run answers it as it is.
    let (s, again) = app.delete(&format!("/runs/{run}")).await;
    assert_eq!((s, &again), (200, &info));
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_second_client_attaches_while_the_run_streams() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(100))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(&app, json!({"message": "hi"})).await;
    let run = run_id(&res);
    let mut original = Reader::new(res);
    let head = [
        original.next().await.unwrap(),
        original.next().await.unwrap(),
    ];
    // Attach after the first event, while the run still streams.
    let res = events(&app, &run, head[0].id.as_deref()).await;
    assert_eq!(res.status(), 200);
    let attached = Reader::new(res).rest().await;
    let rest = original.rest().await;
    assert_eq!(attached[0], head[1]);
    assert_eq!(attached[1..], rest[..]);
    let done = attached.last().unwrap().json();
    assert_eq!(done["done"], true, "{done}");
    let text: String = attached[..attached.len() - 1]
        .iter()
        .chain(&head[..1])
        .map(|f| f.json()["content"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("");
    assert_eq!(text.len(), slow(Duration::ZERO).content.len());
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn under_continue_the_run_outlives_its_client_and_its_reply_is_kept() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(50))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(
        &app,
        json!({"message": "hi", "conversation_id": "cont", "on_disconnect": "continue"}),
    )
    .await;
    let run = run_id(&res);
    let mut reader = Reader::new(res);
    let first = reader.next().await.unwrap();
    drop(reader);
    let info = ended(&app, &run).await;
    assert_eq!(info["status"], "completed", "{info}");
    let (s, conv) = app.get("/conversation/cont").await;
    assert_eq!(s, 200, "{conv}");
    assert_eq!(conv["message_count"], 3);
    assert_eq!(
        conv["messages"][2]["content"],
        slow(Duration::ZERO).content.as_str()
    );
    // Re-attached: everything after what the client saw, through done.
    let res = events(&app, &run, first.id.as_deref()).await;
    let rest = Reader::new(res).rest().await;
    assert_eq!(rest.last().unwrap().json()["done"], true);
    assert_eq!(rest.len(), 10, "nine more pieces and the done frame");
}

#[tokio::test]
async fn under_cancel_the_client_leaving_cancels_the_run() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(100))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(&app, json!({"message": "hi", "conversation_id": "gone"})).await;
    let run = run_id(&res);
    let mut reader = Reader::new(res);
    reader.next().await.unwrap();
    drop(reader);
    let info = ended(&app, &run).await;
    assert_eq!(info["status"], "cancelled", "{info}");
    let (s, _) = app.get("/conversation/gone").await;
    assert_eq!(s, 404, "the conversation is as it was: none");
    // Its log ends with exactly one terminal frame, an error.
    let log = Reader::new(events(&app, &run, None).await).rest().await;
    let last = log.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"));
    assert!(
        last.json()["detail"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    assert!(log[..log.len() - 1].iter().all(|f| f.event.is_none()));
}

#[tokio::test]
async fn delete_cancels_a_running_run_and_its_client_is_told() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(200))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(
        &app,
        json!({"message": "hi", "conversation_id": "del", "on_disconnect": "continue"}),
    )
    .await;
    let run = run_id(&res);
    let mut reader = Reader::new(res);
    reader.next().await.unwrap();
    let (s, info) = app.delete(&format!("/runs/{run}")).await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "cancelled");
    let rest = reader.rest().await;
    let last = rest.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"), "{rest:?}");
    assert_eq!(last.json()["detail"], "the run was cancelled");
    let (s, _) = app.get("/conversation/del").await;
    assert_eq!(s, 404, "a cancelled turn is not kept");
    // Idempotent: the ended run as it is.
    let (s, again) = app.delete(&format!("/runs/{run}")).await;
    assert_eq!((s, again["status"].as_str()), (200, Some("cancelled")));
}

#[tokio::test]
async fn a_run_expires_after_its_ttl() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.run_ttl = Duration::from_millis(300)).await;
    let res = stream(&app, json!({"message": "hi"})).await;
    let run = run_id(&res);
    Reader::new(res).rest().await;
    let (s, _) = app.get(&format!("/runs/{run}")).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for path in [format!("/runs/{run}"), format!("/runs/{run}/events")] {
        let (s, body) = app.get(&path).await;
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, _) = app.delete(&format!("/runs/{run}")).await;
    assert_eq!(s, 404);
    // The janitor lets it go too.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.state.runs.len(), 0);
    assert_eq!(app.state.runs.held_bytes(), 0);
}

#[tokio::test]
async fn positions_no_longer_held_are_410_and_foreign_ids_400() {
    let fake = FakeOpenAi::start_with(Behaviour {
        content: "word ".repeat(40),
        chunks: 40,
        ..Default::default()
    })
    .await;
    // Room for a few frames only.
    let app = TestApp::with_fake(&fake, |c| c.run_log_max_bytes = 600).await;
    let res = stream(&app, json!({"message": "hi"})).await;
    let run = run_id(&res);
    let all = Reader::new(res).rest().await;
    assert_eq!(all.len(), 41);
    let res = events(&app, &run, all[0].id.as_deref()).await;
    assert_eq!(res.status(), 410);
    let res = events(&app, &run, None).await;
    assert_eq!(res.status(), 410, "the start is gone too");
    // The newest are held: a position among them replays.
    let res = events(&app, &run, all[38].id.as_deref()).await;
    assert_eq!(Reader::new(res).rest().await, all[39..]);
    // Garbage, another run's id, a position past the end: 400.
    let other = Reader::new(stream(&app, json!({"message": "x"})).await)
        .rest()
        .await;
    for bad in [
        "garbage".to_owned(),
        other[0].id.clone().unwrap(),
        format!("{run}-99"),
    ] {
        let res = events(&app, &run, Some(&bad)).await;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert!(body["detail"].is_string(), "{body}");
    }
    let res = events(&app, &"0".repeat(32), None).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn another_key_sees_no_run() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, keys).await;
    let res = app
        .client
        .post(format!("{}/chat/stream", app.url))
        .header("x-api-key", "key-a")
        .json(&json!({"message": "mine"}))
        .send()
        .await
        .unwrap();
    let run = run_id(&res);
    let frames = Reader::new(res).rest().await;
    let last = frames.last().unwrap().id.clone().unwrap();
    for (method, path) in [
        ("GET", format!("/runs/{run}")),
        ("GET", format!("/runs/{run}/events")),
        ("DELETE", format!("/runs/{run}")),
    ] {
        let url = format!("{}{path}", app.url);
        let req = if method == "GET" {
            app.client.get(&url)
        } else {
            app.client.delete(&url)
        };
        let res = req.header("x-api-key", "key-b").send().await.unwrap();
        assert_eq!(res.status(), 404, "{method} {path}");
        let res = app
            .client
            .get(format!("{}/runs/{run}", app.url))
            .header("x-api-key", "key-a")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // Bob's EventSource naming Alice's run is told to stop, and starts nothing.
    let res = app
        .client
        .get(format!("{}/chat/stream?message=mine", app.url))
        .header("x-api-key", "key-b")
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn an_event_source_reconnecting_never_starts_a_new_turn() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(50))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    // (Under `cancel` the dropped connection would cancel the run: the reconnect would get its
    // frames up to that, and the cancellation.)
    let url = format!(
        "{}/chat/stream?message=once&conversation_id=es&on_disconnect=continue",
        app.url
    );
    let res = app.client.get(&url).send().await.unwrap();
    let mut reader = Reader::new(res);
    let first = reader.next().await.unwrap();
    let second = reader.next().await.unwrap();
    // The connection drops after two events; the reconnect resumes the run.
    drop(reader);
    let res = app
        .client
        .get(&url)
        .header("last-event-id", first.id.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rest = Reader::new(res).rest().await;
    assert_eq!(rest[0], second);
    let done = rest.last().unwrap();
    assert_eq!(done.json()["done"], true);
    // After done, the reconnect is told to stop; so is one naming nothing we know.
    for last in [
        done.id.clone().unwrap(),
        "nonsense".into(),
        format!("{}-3", "f".repeat(32)),
    ] {
        let res = app
            .client
            .get(&url)
            .header("last-event-id", &last)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{last}");
    }
    assert_eq!(fake.requests().len(), 1, "one upstream call in all");
    let (_, conv) = app.get("/conversation/es").await;
    assert_eq!(conv["message_count"], 3, "one turn in all");
}

#[tokio::test]
async fn a_connection_dropped_before_any_event_resumes_from_the_opening_id() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let url = format!("{}/chat/stream?message=hi", app.url);
    let res = app.client.get(&url).send().await.unwrap();
    let run = run_id(&res);
    // (Under cancel this client's leaving would cancel the run; the reconnect comes first.)
    let mut body = res.bytes_stream();
    let open = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert_eq!(open, format!(": open\nid: {run}-0\n\n"));
    let res = app
        .client
        .get(&url)
        .header("last-event-id", format!("{run}-0"))
        .send()
        .await
        .unwrap();
    let frames = Reader::new(res).rest().await;
    assert_eq!(frames.last().unwrap().json()["done"], true);
    drop(body);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_bad_on_disconnect_is_422() {
    let app = TestApp::echo(|_| {}).await;
    let (s, body) = app
        .post(
            "/chat/stream",
            json!({"message": "hi", "on_disconnect": "later"}),
        )
        .await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "on_disconnect"]));
    let (s, body) = app.get("/chat/stream?message=hi&on_disconnect=x").await;
    assert_eq!(s, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["query", "on_disconnect"]));
    let (s, _) = app
        .post(
            "/chat",
            json!({"message": "hi", "on_disconnect": "continue"}),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_task_is_a_run_that_can_be_followed() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(30))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (s, task) = app.post("/task", json!({"prompt": "work"})).await;
    assert_eq!(s, 202);
    assert!(task.get("run_id").is_none(), "not started: no run yet");
    let id = task["task_id"].as_str().unwrap();
    // Opened at once, even before the task has started.
    let res = app
        .client
        .get(format!("{}/task/{id}/events", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let frames = Reader::new(res).rest().await;
    let done = frames.last().unwrap().json();
    let text: String = frames[..frames.len() - 1]
        .iter()
        .map(|f| f.json()["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, slow(Duration::ZERO).content);
    assert_eq!(done["done"], true);
    assert_eq!(done["task_id"], id);
    assert_eq!(done["result"], text.as_str());
    let finished = app.wait_task(id, 5).await;
    assert_eq!(finished["run_id"], done["run_id"]);
    let (_, run) = app
        .get(&format!("/runs/{}", done["run_id"].as_str().unwrap()))
        .await;
    assert_eq!(run["task_id"], id);
    assert_eq!(run["status"], "completed");
    assert_eq!(run["conversation_id"], Value::Null);
    // Resumed after its first event.
    let res = app
        .client
        .get(format!("{}/task/{id}/events", app.url))
        .header("last-event-id", frames[0].id.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(Reader::new(res).rest().await, frames[1..]);
}

#[tokio::test]
async fn deleting_a_tasks_run_cancels_the_task() {
    let fake = FakeOpenAi::start_with(slow(Duration::from_millis(300))).await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (_, task) = app.post("/task", json!({"prompt": "work"})).await;
    let id = task["task_id"].as_str().unwrap();
    let run = loop {
        let (_, t) = app.get(&format!("/task/{id}")).await;
        if let Some(run) = t["run_id"].as_str() {
            break run.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (s, info) = app.delete(&format!("/runs/{run}")).await;
    assert_eq!(
        (s, info["status"].as_str()),
        (200, Some("cancelled")),
        "{info}"
    );
    let t = app.wait_task(id, 5).await;
    assert_eq!(t["status"], "cancelled");
}

#[tokio::test]
async fn the_logs_held_are_bounded_in_all() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |c| c.run_logs_max_bytes = 2000).await;
    let mut runs = Vec::new();
    for _ in 0..10 {
        let res = stream(&app, json!({"message": "hi"})).await;
        runs.push(run_id(&res));
        Reader::new(res).rest().await;
    }
    assert!(
        app.state.runs.held_bytes() <= 2000,
        "{}",
        app.state.runs.held_bytes()
    );
    // The oldest went first; the newest is still there.
    let (s, _) = app.get(&format!("/runs/{}", runs[0])).await;
    assert_eq!(s, 404);
    let (s, _) = app.get(&format!("/runs/{}", runs[9])).await;
    assert_eq!(s, 200);
    // /metrics says so.
    let metrics = app.metrics().await;
    let value = |name: &str| -> i64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let held = value("agent_api_run_bytes_held ");
    assert!(held > 0 && held <= 2000, "{held}");
    assert_eq!(value("agent_api_runs_held ") as usize, app.state.runs.len());
}

#[tokio::test]
async fn an_upstream_that_breaks_mid_stream_fails_the_run_with_one_terminal_error() {
    let fake = FakeOpenAi::start_with(Behaviour {
        chunks: 6,
        stop_after: Some(2),
        abort: true,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let res = stream(&app, json!({"message": "hi", "conversation_id": "broken"})).await;
    let run = run_id(&res);
    let sent = Reader::new(res).rest().await;
    let last = sent.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"), "{sent:?}");
    let info = ended(&app, &run).await;
    assert_eq!(info["status"], "failed");
    assert_eq!(info["tokens_used"], 0);
    // The log is what the client got, and ends there.
    let log = Reader::new(events(&app, &run, None).await).rest().await;
    assert_eq!(log, sent);
    let (s, _) = app.get("/conversation/broken").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn following_a_task_cancelled_before_it_ran_ends_with_an_error() {
    let fake = FakeOpenAi::start_with(Behaviour {
        first_chunk_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| c.task_concurrency = 1).await;
    let (_, busy) = app.post("/task", json!({"prompt": "slow"})).await;
    let (_, waiting) = app.post("/task", json!({"prompt": "never"})).await;
    let id = waiting["task_id"].as_str().unwrap();
    let res = app
        .client
        .get(format!("{}/task/{id}/events", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "opened while the task waits");
    let (s, t) = app.delete(&format!("/task/{id}")).await;
    assert_eq!((s, t["status"].as_str()), (200, Some("cancelled")));
    let frames = Reader::new(res).rest().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].event.as_deref(), Some("error"));
    assert_eq!(frames[0].json()["detail"], "the task ended before it ran");
    app.delete(&format!("/task/{}", busy["task_id"].as_str().unwrap()))
        .await;
}
