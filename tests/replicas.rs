//! Several replicas on one Redis act as one server: conversations continue across them, one
//! global rate-limit budget, tasks seen and cancelled anywhere and taken over when a replica
//! dies, and a Redis restart in the middle of traffic is survived.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, PrivateRedis, ServerProcess, redis_url};
use serde_json::{Value, json};

fn prefix() -> String {
    format!("replicas-{}:", uuid::Uuid::new_v4().simple())
}

struct Pair {
    a: ServerProcess,
    b: ServerProcess,
}

fn pair(fake: &FakeOpenAi, prefix: &str, extra: &[(&str, &str)]) -> Pair {
    let url = redis_url();
    let mut envs = vec![
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("STORE", url.as_str()),
        ("STORE_PREFIX", prefix),
        ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ("RATE_LIMIT_PER_MINUTE", "1"),
        ("RATE_LIMIT_BURST", "5"),
    ];
    envs.extend_from_slice(extra);
    Pair {
        a: ServerProcess::start(&envs),
        b: ServerProcess::start(&envs),
    }
}

/// A request from `client_ip` (the replicas trust 127.0.0.1's X-Forwarded-For).
async fn send(
    method: reqwest::Method,
    url: &str,
    path: &str,
    client_ip: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = common::client()
        .request(method, format!("{url}{path}"))
        .header("x-forwarded-for", client_ip);
    if let Some(body) = body {
        req = req.json(&body);
    }
    common::answer(req.send().await.unwrap()).await
}

async fn post(url: &str, path: &str, client_ip: &str, body: Value) -> (u16, Value) {
    send(reqwest::Method::POST, url, path, client_ip, Some(body)).await
}

async fn call(method: reqwest::Method, url: &str, path: &str, client_ip: &str) -> (u16, Value) {
    send(method, url, path, client_ip, None).await
}

#[tokio::test]
async fn a_conversation_continues_through_another_replica() {
    let fake = FakeOpenAi::start().await;
    let p = pair(&fake, &prefix(), &[]);
    let (s, _) = post(
        &p.a.url,
        "/chat",
        "10.1.0.1",
        json!({"message": "one", "conversation_id": "x1"}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = post(
        &p.b.url,
        "/chat",
        "10.1.0.1",
        json!({"message": "two", "conversation_id": "x1"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        fake.requests()[1]["messages"].as_array().unwrap().len(),
        4,
        "B saw A's turn"
    );
    let (s, conv) = call(
        reqwest::Method::GET,
        &p.a.url,
        "/conversation/x1",
        "10.1.0.2",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(conv["message_count"], 5);
}

#[tokio::test]
async fn concurrent_turns_across_replicas_never_interleave() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let p = pair(&fake, &prefix(), &[("RATE_LIMIT_BURST", "100")]);
    let calls = (0..10).map(|i| {
        let url = if i % 2 == 0 {
            p.a.url.clone()
        } else {
            p.b.url.clone()
        };
        async move {
            post(
                &url,
                "/chat",
                "10.2.0.1",
                json!({"message": format!("m{i}"), "conversation_id": "shared"}),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    let (_, conv) = call(
        reqwest::Method::GET,
        &p.b.url,
        "/conversation/shared",
        "10.2.0.2",
    )
    .await;
    let messages = conv["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1 + 20);
    for (i, m) in messages[1..].iter().enumerate() {
        assert_eq!(m["role"], if i % 2 == 0 { "user" } else { "assistant" });
    }
}

#[tokio::test]
async fn a_burst_split_across_replicas_admits_exactly_the_global_budget() {
    let fake = FakeOpenAi::start().await;
    let p = pair(&fake, &prefix(), &[]);
    let calls = (0..20).map(|i| {
        let url = if i % 2 == 0 {
            p.a.url.clone()
        } else {
            p.b.url.clone()
        };
        async move {
            post(&url, "/chat", "10.3.0.1", json!({"message": "hi"}))
                .await
                .0
        }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15);
}

#[tokio::test]
async fn a_task_started_on_one_replica_is_seen_and_cancelled_through_the_other() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let p = pair(&fake, &prefix(), &[]);
    let (s, task) = post(&p.a.url, "/task", "10.4.0.1", json!({"prompt": "long"})).await;
    assert_eq!(s, 202);
    let path = format!("/task/{}", task["task_id"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, t) = call(reqwest::Method::GET, &p.b.url, &path, "10.4.0.2").await;
        assert_eq!(s, 200, "B sees A's task: {t}");
        if t["status"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ran: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, t) = call(reqwest::Method::DELETE, &p.b.url, &path, "10.4.0.3").await;
    assert_eq!((s, t["status"].as_str()), (200, Some("cancelled")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, t) = call(reqwest::Method::GET, &p.a.url, &path, "10.4.0.4").await;
    assert_eq!(t["status"], "cancelled");
}

#[tokio::test]
async fn a_task_survives_the_death_of_its_replica() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let prefix = prefix();
    let url = redis_url();
    let envs = [
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("STORE", url.as_str()),
        ("STORE_PREFIX", prefix.as_str()),
        ("TASK_LEASE_SECS", "1"),
    ];
    let mut a = ServerProcess::start(&envs);
    let (s, task) = post(&a.url, "/task", "10.5.0.1", json!({"prompt": "survive"})).await;
    assert_eq!(s, 202);
    let path = format!("/task/{}", task["task_id"].as_str().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, t) = call(reqwest::Method::GET, &a.url, &path, "10.5.0.1").await;
        if t["status"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ran: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill_hard();
    fake.set(|b| b.delay = Duration::ZERO);
    let b = ServerProcess::start(&envs);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let done = loop {
        let (_, t) = call(reqwest::Method::GET, &b.url, &path, "10.5.0.1").await;
        if ["completed", "failed", "cancelled"].contains(&t["status"].as_str().unwrap_or("")) {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {t} 10 s after its replica died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "Hello from the fake upstream");
}

#[tokio::test]
async fn a_redis_restart_in_the_middle_of_traffic_is_survived() {
    let mut redis = PrivateRedis::start(common::free_port());
    let fake = FakeOpenAi::start().await;
    let store = redis.url();
    let server = ServerProcess::start(&[
        ("OPENAI_BASE_URL", fake.url.as_str()),
        ("STORE", store.as_str()),
        ("RATE_LIMIT_BURST", "1000"),
    ]);
    let (s, _) = post(
        &server.url,
        "/chat",
        "1.1.1.1",
        json!({"message": "before"}),
    )
    .await;
    assert_eq!(s, 200);

    redis.stop();
    let (s, body) = post(
        &server.url,
        "/chat",
        "1.1.1.1",
        json!({"message": "during"}),
    )
    .await;
    assert_eq!(s, 503, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("redis"), "{body}");
    let (s, _) = call(reqwest::Method::GET, &server.url, "/ready", "1.1.1.1").await;
    assert_eq!(s, 503);
    let (s, _) = call(reqwest::Method::GET, &server.url, "/health", "1.1.1.1").await;
    assert_eq!(s, 200, "liveness does not depend on Redis");

    let _redis = PrivateRedis::start(redis.port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = post(&server.url, "/chat", "1.1.1.1", json!({"message": "after"})).await;
        if s == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recovered 10 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = call(reqwest::Method::GET, &server.url, "/ready", "1.1.1.1").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn the_per_key_limit_is_exact_across_replicas() {
    let fake = FakeOpenAi::start().await;
    let p = pair(
        &fake,
        &prefix(),
        &[
            ("API_KEYS", "alice=key-a,bob=key-b"),
            ("RATE_LIMIT_PER_MINUTE", "1000000"),
            ("RATE_LIMIT_BURST", "5"),
            ("RATE_LIMIT_PER_KEY_PER_MINUTE", "1"),
        ],
    );
    // 20 requests of one key, alternating replicas and from different client addresses (so
    // that only the key's budget can refuse them): the key's burst of 5, in all.
    let mut ok = 0;
    for i in 0..20 {
        let url = if i % 2 == 0 { &p.a.url } else { &p.b.url };
        let res = common::client()
            .get(format!("{url}/conversations"))
            .header("x-forwarded-for", format!("10.7.0.{i}"))
            .header("x-api-key", "key-a")
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            200 => ok += 1,
            429 => assert!(res.headers().contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 5, "one budget for the key across both replicas");
    let res = common::client()
        .get(format!("{}/conversations", p.b.url))
        .header("x-forwarded-for", "10.7.1.1")
        .header("x-api-key", "key-b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "another key has its own budget");
}

#[tokio::test]
async fn per_key_conversation_quotas_are_exact_across_replicas() {
    let fake = FakeOpenAi::start().await;
    let p = pair(
        &fake,
        &prefix(),
        &[
            ("API_KEYS", "alice=key-a,bob=key-b"),
            ("RATE_LIMIT_PER_MINUTE", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
            ("MAX_CONVERSATIONS_PER_KEY", "3"),
        ],
    );
    let chat = |url: &str, key: &str, id: String| {
        let req = common::client()
            .post(format!("{url}/chat"))
            .header("x-forwarded-for", "10.7.2.1")
            .header("x-api-key", key)
            .json(&json!({"message": "hi", "conversation_id": id}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(chat(&p.a.url, "key-b", "b0".into()).await, 200);
    for i in 0..10 {
        let url = if i % 2 == 0 { &p.a.url } else { &p.b.url };
        assert_eq!(chat(url, "key-a", format!("a{i}")).await, 200);
    }
    let list = |url: String, key: &'static str| async move {
        let res = common::client()
            .get(format!("{url}/conversations"))
            .header("x-forwarded-for", "10.7.2.1")
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        res.json::<Value>().await.unwrap()
    };
    let mine = list(p.b.url.clone(), "key-a").await;
    assert_eq!(mine["count"], 3, "{mine}");
    assert_eq!(mine["conversations"][0]["conversation_id"], "a9");
    assert_eq!(
        list(p.a.url.clone(), "key-b").await["count"],
        1,
        "bob lost nothing"
    );
}

#[tokio::test]
async fn the_per_key_stream_quota_is_exact_across_replicas() {
    let fake = FakeOpenAi::start().await;
    fake.set(|b| b.first_chunk_delay = Duration::from_secs(30));
    let p = pair(
        &fake,
        &prefix(),
        &[
            ("API_KEYS", "alice=key-a,bob=key-b"),
            ("RATE_LIMIT_PER_MINUTE", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
            ("MAX_STREAMS_PER_KEY", "2"),
        ],
    );
    let open = |url: &str, key: &str| {
        let req = common::client()
            .post(format!("{url}/chat/stream"))
            .header("x-forwarded-for", "10.7.3.1")
            .header("x-api-key", key)
            .json(&json!({"message": "hold"}));
        async move { req.send().await.unwrap() }
    };
    // One stream held on each replica: the key's two.
    let a = open(&p.a.url, "key-a").await;
    assert_eq!(a.status(), 200);
    let b = open(&p.b.url, "key-a").await;
    assert_eq!(b.status(), 200);
    for url in [&p.a.url, &p.b.url] {
        let refused = open(url, "key-a").await;
        assert_eq!(refused.status(), 429, "a third stream of the key, anywhere");
        assert!(refused.headers().contains_key("retry-after"));
    }
    assert_eq!(
        open(&p.b.url, "key-b").await.status(),
        200,
        "another key streams"
    );
    // The key's place comes back, on the other replica too, when a stream ends.
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        if open(&p.b.url, "key-a").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the ended stream's place was not given back");
    drop(b);
}

/// The frames of an SSE body, as (id, event, data), as they come.
async fn sse_frames(res: reqwest::Response, want: usize) -> Vec<(String, String, String)> {
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < want {
        let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(15), futures::StreamExt::next(&mut body))
                .await
        else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = v.to_owned();
                }
            }
            if !data.is_empty() {
                out.push((id, event, data));
            }
        }
    }
    out
}

fn slow_stream(chunks: usize, gap: Duration) -> Behaviour {
    Behaviour {
        content: "word ".repeat(chunks),
        chunks,
        chunk_delay: gap,
        ..Default::default()
    }
}

async fn open_stream(url: &str, ip: &str, body: Value) -> (String, reqwest::Response) {
    let res = common::client()
        .post(format!("{url}/chat/stream"))
        .header("x-forwarded-for", ip)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let run = res.headers()["x-run-id"].to_str().unwrap().to_owned();
    (run, res)
}

async fn follow_run(url: &str, ip: &str, run: &str, last: Option<&str>) -> reqwest::Response {
    let mut req = common::client()
        .get(format!("{url}/runs/{run}/events"))
        .header("x-forwarded-for", ip);
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_run_is_followed_through_another_replica() {
    let fake = FakeOpenAi::start_with(slow_stream(10, Duration::from_millis(100))).await;
    let prefix = prefix();
    let p = pair(&fake, &prefix, &[]);
    let body = json!({"message": "hi", "conversation_id": "rr", "on_disconnect": "continue"});
    let (run, res) = open_stream(&p.a.url, "10.9.0.1", body).await;
    // The first event on A, then the client goes.
    let first = sse_frames(res, 1).await;
    let first_id = first[0].0.clone();
    assert_eq!(first_id, format!("{run}-1"));
    // Through B: everything after it, live, to the done frame, with A's ids.
    let res = follow_run(&p.b.url, "10.9.0.2", &run, Some(&first_id)).await;
    assert_eq!(res.status(), 200);
    let frames = sse_frames(res, 10).await;
    assert_eq!(frames.len(), 10, "{frames:?}");
    for (i, (id, _, _)) in frames.iter().enumerate() {
        assert_eq!(id, &format!("{run}-{}", i + 2));
    }
    let done: Value = serde_json::from_str(&frames[9].2).unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["run_id"], run.as_str());
    // Replayed through B once ended: the same bytes as through A.
    let via_b = follow_run(&p.b.url, "10.9.0.2", &run, None)
        .await
        .text()
        .await
        .unwrap();
    let via_a = follow_run(&p.a.url, "10.9.0.1", &run, None)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(via_a, via_b);
    let (s, info) = call(
        reqwest::Method::GET,
        &p.b.url,
        &format!("/runs/{run}"),
        "10.9.0.2",
    )
    .await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "completed");
    assert_eq!(info["conversation_id"], "rr");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_run_whose_replica_dies_ends_interrupted_for_whoever_attaches() {
    let fake = FakeOpenAi::start_with(slow_stream(40, Duration::from_millis(250))).await;
    let prefix = prefix();
    let mut p = pair(&fake, &prefix, &[("TASK_LEASE_SECS", "1")]);
    let body = json!({"message": "hi", "on_disconnect": "continue"});
    let (run, res) = open_stream(&p.a.url, "10.9.1.1", body).await;
    let before = sse_frames(res, 3).await;
    assert_eq!(before.len(), 3);
    // Flushed to Redis (the flusher writes as events come).
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.a.kill_hard();
    let killed = tokio::time::Instant::now();
    let res = follow_run(&p.b.url, "10.9.1.2", &run, None).await;
    assert_eq!(res.status(), 200);
    let frames = sse_frames(res, 100).await;
    let (last, events) = frames.split_last().unwrap();
    assert!(events.len() >= 3, "the events so far: {frames:?}");
    assert_eq!(&events[..3], &before[..]);
    assert_eq!(last.1, "error");
    let detail: Value = serde_json::from_str(&last.2).unwrap();
    assert_eq!(detail["detail"], "the run was interrupted");
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
    let (_, info) = call(
        reqwest::Method::GET,
        &p.b.url,
        &format!("/runs/{run}"),
        "10.9.1.2",
    )
    .await;
    assert_eq!(info["status"], "interrupted", "{info}");
}

#[tokio::test]
async fn delete_through_another_replica_cancels_the_run() {
    let fake = FakeOpenAi::start_with(slow_stream(40, Duration::from_millis(200))).await;
    let prefix = prefix();
    let p = pair(&fake, &prefix, &[]);
    let body = json!({"message": "hi", "conversation_id": "rd", "on_disconnect": "continue"});
    let (run, res) = open_stream(&p.a.url, "10.9.2.1", body).await;
    let path = format!("/runs/{run}");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        call(reqwest::Method::DELETE, &p.b.url, &path, "10.9.2.2").await
    };
    let (frames, (s, info)) = tokio::join!(sse_frames(res, 100), cancel);
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "cancelled");
    let last = frames.last().unwrap();
    assert_eq!(last.1, "error", "{frames:?}");
    assert!(frames.len() < 41, "stopped early");
    let (s, _) = call(
        reqwest::Method::GET,
        &p.b.url,
        "/conversation/rd",
        "10.9.2.2",
    )
    .await;
    assert_eq!(s, 404, "the cancelled turn is not kept");
}
