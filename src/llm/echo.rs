//! `echo`: an offline, deterministic model for development, demos and tests.
//!
//! It answers `Echo: <the last user message>` in word-sized chunks, with usage counted in words.
//! The input chooses its behaviour: a message containing `[fail]` fails, one containing `[slow]`
//! waits a minute before answering (so that timeouts and cancellation can be seen).

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
        let answer = format!("Echo: {text}");
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
        raws.push(chunk_json(&id, &model, json!({}), Some("stop"), None));
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

    #[tokio::test]
    async fn fail_fails() {
        let p = EchoProvider::new(Duration::ZERO, Duration::from_secs(1));
        let req = ChatRequest::new("m", vec![Message::new("user", "please [fail]")], 0.7, 10);
        assert!(p.stream(req).await.is_err());
    }
}
