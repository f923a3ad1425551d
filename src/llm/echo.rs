//! `echo`: an offline, deterministic model for development, demos and tests.
//!
//! It answers `Echo: <the last user message>` in word-sized chunks, with usage counted in words.
//! The input chooses its behaviour: a message containing `[fail]` fails, one containing `[slow]`
//! waits a minute before answering (so that timeouts and cancellation can be seen).
//!
//! It calls tools too, so that the agent loop runs offline: when the request offers tools (and
//! `tool_choice` is not `"none"`), a last user message containing `[tool:NAME {json arguments}]`
//! (one or more) is answered with those calls; after the tool results (the request ends with
//! `tool` messages) it answers `Echo:` followed by them.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{
    ChatChunk, ChatRequest, ChunkStream, LlmError, LlmProvider, Usage, count_tokens, guard_stream,
};

pub struct EchoProvider {
    /// Pause between two chunks, so that streaming can be seen.
    delay: Duration,
    timeout: Duration,
}

impl EchoProvider {
    pub fn new(delay: Duration, timeout: Duration) -> Self {
        Self { delay, timeout }
    }
}

/// Splits text into chunks of one word each, keeping the spaces.
fn word_chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch == ' ' && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn chunk_json(
    id: &str,
    model: &str,
    delta: Value,
    finish: Option<&str>,
    usage: Option<Usage>,
) -> String {
    let mut v = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": chrono::Utc::now().timestamp(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if let Some(u) = usage {
        v["choices"] = json!([]);
        v["usage"] = json!(u);
    }
    v.to_string()
}

#[async_trait]
impl LlmProvider for EchoProvider {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, LlmError> {
        let text = req.last_user_text();
        if text.contains("[fail]") {
            return Err(LlmError::Failed("echo was asked to fail".into()));
        }
        let slow = text.contains("[slow]");
        let texts = req.texts();
        let results: Vec<&str> = texts
            .iter()
            .rev()
            .take_while(|(role, _)| *role == "tool")
            .map(|(_, t)| t.as_str())
            .collect();
        let calls = if results.is_empty() && offers_tools(&req) {
            tool_markers(&text)
        } else {
            Vec::new()
        };
        let answer = if results.is_empty() {
            format!("Echo: {text}")
        } else {
            let results: Vec<&str> = results.into_iter().rev().collect();
            format!("Echo: {}", results.join(" "))
        };
        let answer = if calls.is_empty() {
            answer
        } else {
            String::new()
        };
        let (prompt_tokens, completion_tokens) =
            (count_tokens(&req.all_text()), count_tokens(&answer));
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        };
        let id = format!("chatcmpl-echo-{}", uuid::Uuid::new_v4().simple());
        let model = req.model.clone();
        let mut raws = vec![chunk_json(
            &id,
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
            None,
        )];
        for word in word_chunks(&answer) {
            raws.push(chunk_json(
                &id,
                &model,
                json!({"content": word}),
                None,
                None,
            ));
        }
        // A call in two fragments (name, then arguments), as real servers stream them.
        for (i, (name, arguments)) in calls.iter().enumerate() {
            let call_id = format!("call_{}", uuid::Uuid::new_v4().simple());
            let head = json!({"tool_calls": [{"index": i, "id": call_id, "type": "function",
                "function": {"name": name, "arguments": ""}}]});
            raws.push(chunk_json(&id, &model, head, None, None));
            let rest = json!({"tool_calls": [{"index": i, "function": {"arguments": arguments}}]});
            raws.push(chunk_json(&id, &model, rest, None, None));
        }
        let finish = if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        raws.push(chunk_json(&id, &model, json!({}), Some(finish), None));
        raws.push(chunk_json(&id, &model, json!({}), None, Some(usage)));
        let delay = self.delay;
        let stream = futures::stream::unfold(
            (raws.into_iter(), true),
            move |(mut it, first)| async move {
                let raw = it.next()?;
                if first && slow {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                } else if !first && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((ChatChunk::parse(raw), (it, false)))
            },
        );
        Ok(guard_stream(Box::pin(stream), self.timeout))
    }
}

/// Whether the request offers tools the model may call.
fn offers_tools(req: &ChatRequest) -> bool {
    let tools = req
        .extra
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    tools && req.extra.get("tool_choice").and_then(Value::as_str) != Some("none")
}

/// The `[tool:NAME {json}]` markers of a message: each call's name and arguments (the text
/// between the name and the closing bracket, valid JSON or not).
fn tool_markers(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("[tool:") {
        rest = &rest[at + "[tool:".len()..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let after = rest[name_len..].trim_start();
        // The arguments end where a JSON value ends, else at the next `]`.
        let mut values = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        let end = match values.next() {
            Some(Ok(_)) => values.byte_offset(),
            _ => after.find(']').unwrap_or(after.len()),
        };
        let arguments = after[..end].trim();
        if !name.is_empty() {
            let arguments = if arguments.is_empty() {
                "{}"
            } else {
                arguments
            };
            out.push((name.to_owned(), arguments.to_owned()));
        }
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;
    use futures::StreamExt;

    #[test]
    fn words_keep_their_spaces() {
        assert_eq!(
            word_chunks("Echo: hi  there"),
            vec!["Echo:", " hi", "  there"]
        );
        assert_eq!(word_chunks(""), Vec::<String>::new());
    }

    #[tokio::test]
    async fn streams_the_user_words_back_with_usage() {
        let p = EchoProvider::new(Duration::ZERO, Duration::from_secs(1));
        let req = ChatRequest::new("m", vec![Message::new("user", "hello world")], 0.7, 10);
        let chunks: Vec<_> = p.stream(req.clone()).await.unwrap().collect().await;
        let text: String = chunks
            .iter()
            .map(|c| c.as_ref().unwrap().delta.clone())
            .collect();
        assert_eq!(text, "Echo: hello world");
        assert!(chunks.len() > 3);
        let done = p.complete(req).await.unwrap();
        assert_eq!(done.content, "Echo: hello world");
        assert_eq!(done.usage.unwrap().completion_tokens, 3);
    }

    #[test]
    fn markers() {
        assert_eq!(
            tool_markers(
                r#"do [tool:lookup {"order_id": "42"}] and [tool:time-now] [tool:x not json]"#
            ),
            vec![
                ("lookup".to_owned(), r#"{"order_id": "42"}"#.to_owned()),
                ("time-now".to_owned(), "{}".to_owned()),
                ("x".to_owned(), "not json".to_owned()),
            ]
        );
        assert!(tool_markers("no calls [tool:]").is_empty());
    }

    #[tokio::test]
    async fn calls_tools_when_offered_then_echoes_the_results() {
        let p = EchoProvider::new(Duration::ZERO, Duration::from_secs(1));
        let mut req = ChatRequest::new(
            "m",
            vec![Message::new("user", r#"[tool:f {"a": 1}] [tool:g {}]"#)],
            0.7,
            10,
        );
        // Without tools offered, the marker is only text.
        assert!(p.complete(req.clone()).await.unwrap().tool_calls.is_empty());
        req.extra
            .insert("tools".into(), json!([{"type": "function"}]));
        let done = p.complete(req.clone()).await.unwrap();
        let names: Vec<&str> = done
            .tool_calls
            .iter()
            .map(|c| c.function.name.as_str())
            .collect();
        assert_eq!(names, ["f", "g"]);
        assert_eq!(done.tool_calls[0].function.arguments, r#"{"a": 1}"#);
        assert!(done.raw.contains("\"finish_reason\":\"tool_calls\""));
        let crate::llm::Messages::Turn(m) = &mut req.messages else {
            unreachable!()
        };
        m.push(Message::assistant_calls("", done.tool_calls.clone()));
        m.push(Message::tool_result(&done.tool_calls[0].id, "one"));
        m.push(Message::tool_result(&done.tool_calls[1].id, "two"));
        let after = p.complete(req.clone()).await.unwrap();
        assert_eq!(after.content, "Echo: one two");
        assert!(after.tool_calls.is_empty());
        // tool_choice none: text even when the user message holds a marker.
        let mut none = ChatRequest::new("m", vec![Message::new("user", "[tool:f {}]")], 0.7, 10);
        none.extra
            .insert("tools".into(), json!([{"type": "function"}]));
        none.extra.insert("tool_choice".into(), json!("none"));
        assert!(p.complete(none).await.unwrap().tool_calls.is_empty());
    }

    #[tokio::test]
    async fn fail_fails() {
        let p = EchoProvider::new(Duration::ZERO, Duration::from_secs(1));
        let req = ChatRequest::new("m", vec![Message::new("user", "please [fail]")], 0.7, 10);
        assert!(p.stream(req).await.is_err());
    }
}
