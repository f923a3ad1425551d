//! Background tasks: `POST /task`, `GET`/`DELETE /task/{id}`, `GET /tasks`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::{Behaviour, FakeOpenAi, TestApp};
use serde_json::json;

#[tokio::test]
async fn task_runs_to_completed_with_the_contract_shape() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (status, body) = app
        .post(
            "/task",
            json!({"prompt": "Summarize the plan", "task_type": "summary"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["completed_at", "created_at", "result", "status", "task_id"]
    );
    assert_eq!(body["status"], "pending");
    assert_eq!(body["result"], json!(null));
    assert_eq!(body["completed_at"], json!(null));
    let id = body["task_id"].as_str().unwrap();
    let done = app.wait_task(id, 10).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "Hello from the fake upstream");
    assert!(done["completed_at"].is_string());
    let sent = &fake.requests()[0];
    assert_eq!(sent["model"], "gpt-4o", "tasks use TASK_MODEL");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("summary")
    );
    assert_eq!(sent["messages"][1]["content"], "Summarize the plan");

    let (status, list) = app.get("/tasks").await;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 1);
    assert_eq!(list["tasks"][0]["task_id"], id);
}

#[tokio::test]
async fn failing_task_ends_failed_with_the_error() {
    let fake = FakeOpenAi::start_with(Behaviour {
        status: 500,
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (_, body) = app.post("/task", json!({"prompt": "x"})).await;
    let done = app.wait_task(body["task_id"].as_str().unwrap(), 10).await;
    assert_eq!(done["status"], "failed");
    let result = done["result"].as_str().unwrap();
    assert!(result.contains("500"), "{result}");
    assert!(!result.contains("sk-test-secret-key"));
}

#[tokio::test]
async fn task_cancelled_while_running() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |_| {}).await;
    let (_, body) = app.post("/task", json!({"prompt": "long"})).await;
    let id = body["task_id"].as_str().unwrap().to_owned();
    // wait until it runs
    for _ in 0..100 {
        let (_, t) = app.get(&format!("/task/{id}")).await;
        if t["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = app.delete(&format!("/task/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    let done = app.wait_task(&id, 2).await;
    assert_eq!(done["status"], "cancelled");
    // It stays cancelled after the upstream would have answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, t) = app.get(&format!("/task/{id}")).await;
    assert_eq!(t["status"], "cancelled");
    assert_eq!(app.state.runner.active(), 0);
    let (status, _) = app.delete("/task/unknown").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fifty_tasks_at_once_all_finish() {
    let app = TestApp::echo(|c| {
        c.task_concurrency = 4;
        c.task_queue_size = 100;
    })
    .await;
    let submits = (0..50).map(|i| {
        let app = &app;
        async move {
            app.post("/task", json!({"prompt": format!("job {i}")}))
                .await
        }
    });
    let created = futures::future::join_all(submits).await;
    assert!(created.iter().all(|(s, _)| *s == 202));
    for (_, body) in &created {
        let done = app.wait_task(body["task_id"].as_str().unwrap(), 20).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let (_, list) = app.get("/tasks?limit=1000").await;
    assert_eq!(list["count"], 50);
}

#[tokio::test]
async fn full_queue_is_503_and_time_limit_fails_a_task() {
    let fake = FakeOpenAi::start_with(Behaviour {
        delay: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let app = TestApp::with_fake(&fake, |c| {
        c.task_concurrency = 1;
        c.task_queue_size = 2;
        c.task_timeout = Duration::from_millis(400);
    })
    .await;
    let mut ids = vec![];
    let mut refused = 0;
    for i in 0..5 {
        let (status, body) = app.post("/task", json!({"prompt": format!("{i}")})).await;
        match status {
            202 => ids.push(body["task_id"].as_str().unwrap().to_owned()),
            503 => {
                refused += 1;
                assert!(body["detail"].as_str().unwrap().contains("queue"), "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused >= 2, "a queue of 2 refuses some of 5");
    for id in ids {
        let done = app.wait_task(&id, 10).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["result"].as_str().unwrap().contains("longer than"));
    }
}

#[tokio::test]
async fn task_validation() {
    let app = TestApp::echo(|_| {}).await;
    for body in [json!({}), json!({"prompt": ""}), json!({"prompt": 3})] {
        let (status, res) = app.post("/task", body.clone()).await;
        assert_eq!(status, 422, "{body}: {res}");
        assert_eq!(res["detail"][0]["loc"], json!(["body", "prompt"]));
    }
}
