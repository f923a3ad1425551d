//! A turn's events as SSE frames (`event:` name and `data:`), rendered once: the producer logs
//! exactly what its client is sent, so that a replay is the first sending byte for byte. The
//! WebSocket's frames are built from the same [`done_json`].

use serde_json::json;

use crate::agent::TurnEvent;
use crate::error::ApiError;

/// One frame's `event:` name (`None`: a plain `data:` frame) and data.
pub type Frame = (Option<&'static str>, String);

/// The frame of one of a streamed turn's events; the done frame names `run_id` when the turn is
/// a run.
pub fn render(event: TurnEvent, run_id: Option<&str>) -> Frame {
    match event {
        TurnEvent::Delta(text) => (None, json!({ "content": text }).to_string()),
        // Serialized from the struct, in its field order (id, name, ...).
        TurnEvent::ToolCall(call) => (
            Some("tool_call"),
            serde_json::to_string(&call).unwrap_or_default(),
        ),
        TurnEvent::ToolResult(result) => (
            Some("tool_result"),
            serde_json::to_string(&result).unwrap_or_default(),
        ),
        done @ TurnEvent::Done { .. } => {
            let mut v = done_json(done);
            if let Some(run) = run_id {
                v["run_id"] = json!(run);
            }
            (None, v.to_string())
        }
        TurnEvent::Failed(e) => error(&ApiError::from(e)),
    }
}

/// An `event: error` frame with `{"detail": ...}`.
pub fn error(e: &ApiError) -> Frame {
    (Some("error"), e.detail_body().to_string())
}

/// An `event: error` frame with the given detail.
pub fn error_detail(detail: &str) -> Frame {
    (Some("error"), json!({ "detail": detail }).to_string())
}

/// A task's done frame: `{"done": true, "task_id", "result", "run_id"}`.
pub fn task_done(task_id: &str, result: Option<&str>, run_id: &str) -> Frame {
    let done = json!({"done": true, "task_id": task_id, "result": result, "run_id": run_id});
    (None, done.to_string())
}

/// The `event:` names a log holds, as the `&'static str` a [`Frame`] carries (for a log read
/// back from the store); anything else is a plain `data:` frame.
pub fn name(text: &str) -> Option<&'static str> {
    ["tool_call", "tool_result", "error"]
        .into_iter()
        .chain(crate::responses::events::EVENT_TYPES.iter().copied())
        .find(|n| *n == text)
}

/// The done frame (SSE and WebSocket alike): `steps` only for an agent's loop, so that the
/// tutorial's frame is unchanged.
pub fn done_json(event: TurnEvent) -> serde_json::Value {
    let TurnEvent::Done {
        conversation_id,
        tokens_used,
        steps,
    } = event
    else {
        return json!({});
    };
    let mut v =
        json!({"done": true, "conversation_id": conversation_id, "tokens_used": tokens_used});
    if let Some(steps) = steps {
        v["steps"] = json!(steps);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentError;
    use crate::llm::LlmError;

    #[test]
    fn frames() {
        let (name, data) = render(TurnEvent::Delta("Hel".into()), None);
        assert_eq!((name, data.as_str()), (None, r#"{"content":"Hel"}"#));
        let (name, data) = render(
            TurnEvent::Failed(AgentError::Llm(LlmError::Incomplete)),
            None,
        );
        assert_eq!(name, Some("error"));
        assert!(data.starts_with(r#"{"detail":"#), "{data}");
        let done = TurnEvent::Done {
            conversation_id: "c".into(),
            tokens_used: 3,
            steps: None,
        };
        let (_, data) = render(done, Some("r1"));
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(
            v,
            json!({"done": true, "conversation_id": "c", "tokens_used": 3, "run_id": "r1"})
        );
    }
}
