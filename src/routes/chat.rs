//! `POST /chat`, and the chat input that `/chat/stream` and `/ws` share with it.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::agent::{self, Agents, ChatTurn, ToolCallView};
use crate::config::Config;
use crate::error::{ApiError, FieldError};
use crate::extract::AppJson;
use crate::llm::estimate_tokens;
use crate::middleware::auth::Caller;
use crate::openapi::{DetailError, ModelCallErrors};
use crate::state::AppState;

pub use crate::agent::{DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPERATURE};
/// The tutorial's default; `min(1000, MAX_OUTPUT_TOKENS)` is sent.
pub const DEFAULT_MAX_TOKENS: i64 = 1000;

/// The 422 entry of a model outside `MODELS` (`None` when it is allowed).
pub fn model_error(config: &Config, root: &str, model: &str) -> Option<FieldError> {
    if model.trim().is_empty() || model.len() > 256 {
        return Some(FieldError {
            loc: vec![json!(root), json!("model")],
            msg: "String should have 1 to 256 characters".into(),
            kind: "string_length".into(),
        });
    }
    (!config.model_allowed(model)).then(|| FieldError {
        loc: vec![json!(root), json!("model")],
        msg: format!(
            "Input should be one of the models this server offers: {}",
            config.models.join(", ")
        ),
        kind: "enum".into(),
    })
}

/// The body of `POST /chat` and `POST /chat/stream` (and a WebSocket message).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ChatInput {
    /// At least one non-blank character.
    #[schema(min_length = 1, pattern = "\\S")]
    pub message: String,
    /// 1 to 128 of `[A-Za-z0-9_-]`; the caller's own (ids are per key). New when unknown.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// 1 to `MAX_OUTPUT_TOKENS` (default 4000).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// Another name for `max_tokens`, as OpenAI calls it now.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    /// One of `MODELS` (default `CHAT_MODEL`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub model: Option<String>,
    /// When the conversation is busy with another turn: `wait` (the default, at most
    /// `TURN_WAIT_SECS`, then 409) or `reject` (409 at once). 409 carries `Retry-After`.
    #[serde(default)]
    #[schema(value_type = Option<IfBusy>)]
    pub if_busy: Option<String>,
    /// One of `GET /agents` (default: the conversation's own, else `default`). A conversation
    /// belongs to the agent of its first turn: naming another answers 409.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub agent: Option<String>,
    /// A streamed turn whose client leaves: `cancel` (the default: the run is cancelled, the
    /// conversation unchanged) or `continue` (the run goes on to its end, its reply is kept, and
    /// `GET /runs/{run_id}/events` re-attaches). `POST /chat` and `/ws` check it but their
    /// turns are not runs.
    #[serde(default)]
    #[schema(value_type = Option<OnDisconnect>)]
    pub on_disconnect: Option<String>,
}

/// The values of `on_disconnect` (read as text, like `if_busy`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "documents the field's values")]
pub enum OnDisconnect {
    Cancel,
    Continue,
}

/// The values of `if_busy` (for the document; the field is read as text so that a bad value is
/// a 422 that names it).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code, reason = "documents the field's values")]
pub enum IfBusy {
    Wait,
    Reject,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatResponse {
    pub response: String,
    pub conversation_id: String,
    pub tokens_used: u64,
    #[serde(serialize_with = "crate::routes::rfc3339")]
    pub timestamp: DateTime<Utc>,
    /// The tools the turn called (an agent's turn), in call order, each with its `result` or
    /// `error`; absent when it called none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallView>>,
    /// Model calls made (an agent with tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}

/// Whether `id` is a valid conversation id: 1..128 of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ChatInput {
    /// Checks every field (all errors at once, as FastAPI reports them); `root` is the first
    /// `loc` entry (`body` or `query`).
    pub fn validate(
        self,
        config: &Config,
        agents: &Agents,
        root: &str,
    ) -> Result<ChatTurn, ApiError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, msg: String, kind: &str| {
            errors.push(FieldError {
                loc: vec![json!(root), json!(field)],
                msg,
                kind: kind.to_owned(),
            });
        };
        if self.message.trim().is_empty() {
            err(
                "message",
                "String should have at least 1 non-blank character".into(),
                "string_too_short",
            );
        } else if estimate_tokens(&self.message) > config.max_history_tokens {
            err(
                "message",
                format!(
                    "The message alone is longer than this server sends a model \
                     (MAX_HISTORY_TOKENS={} tokens, estimated)",
                    config.max_history_tokens
                ),
                "too_long",
            );
        }
        if let Some(id) = &self.conversation_id
            && !valid_id(id)
        {
            err(
                "conversation_id",
                "String should be 1 to 128 characters of A-Z, a-z, 0-9, _ or -".into(),
                "string_pattern_mismatch",
            );
        }
        if let Some(name) = &self.agent
            && agents.get(name).is_none()
        {
            err(
                "agent",
                "Input should be the name of one of this server's agents (GET /agents)".into(),
                "enum",
            );
        }
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            err(
                "temperature",
                "Input should be between 0 and 2".into(),
                "value_out_of_range",
            );
        }
        let limit = i64::from(config.max_output_tokens);
        let default_max_tokens = DEFAULT_MAX_TOKENS.min(limit);
        let asked = self.max_tokens.or(self.max_completion_tokens);
        let (field, max_tokens) = match (self.max_tokens, self.max_completion_tokens) {
            (Some(n), _) => ("max_tokens", n),
            (None, Some(n)) => ("max_completion_tokens", n),
            (None, None) => ("max_tokens", default_max_tokens),
        };
        if !(1..=limit).contains(&max_tokens) {
            err(
                field,
                format!("Input should be between 1 and {limit}"),
                "value_out_of_range",
            );
        }
        // Both given: the other name must be valid too, though `max_tokens` wins.
        if let (Some(_), Some(n)) = (self.max_tokens, self.max_completion_tokens)
            && !(1..=limit).contains(&n)
        {
            err(
                "max_completion_tokens",
                format!("Input should be between 1 and {limit}"),
                "value_out_of_range",
            );
        }
        if let Some(e) = self
            .model
            .as_deref()
            .and_then(|m| model_error(config, root, m))
        {
            errors.push(e);
        }
        let turn_wait = match self.if_busy.as_deref() {
            None | Some("wait") => config.turn_wait,
            Some("reject") => std::time::Duration::ZERO,
            Some(_) => {
                errors.push(FieldError {
                    loc: vec![json!(root), json!("if_busy")],
                    msg: "Input should be 'wait' or 'reject'".into(),
                    kind: "enum".into(),
                });
                config.turn_wait
            }
        };
        let keep_going = match self.on_disconnect.as_deref() {
            None | Some("cancel") => false,
            Some("continue") => true,
            Some(_) => {
                errors.push(FieldError {
                    loc: vec![json!(root), json!("on_disconnect")],
                    msg: "Input should be 'cancel' or 'continue'".into(),
                    kind: "enum".into(),
                });
                false
            }
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(ChatTurn {
            conversation_id: self.conversation_id,
            message: self.message,
            agent: self.agent,
            system_prompt: self.system_prompt,
            temperature: self.temperature,
            max_tokens: asked.map(|n| n as u32),
            model: self.model,
            default_max_tokens: default_max_tokens as u32,
            default_model: config.chat_model.clone(),
            max_history_tokens: config.max_history_tokens,
            turn_wait,
            turn_timeout: config.turn_timeout,
            frame_timeout: config.stream_write_timeout,
            keep_going,
        })
    }
}

/// The query of `GET /chat/stream`: the same fields, all as text.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChatQuery {
    #[param(min_length = 1, pattern = "\\S")]
    pub message: String,
    #[param(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub conversation_id: Option<String>,
    pub system_prompt: Option<String>,
    #[param(value_type = Option<f64>, minimum = 0, maximum = 2)]
    pub temperature: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1)]
    pub max_tokens: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1)]
    pub max_completion_tokens: Option<String>,
    #[param(min_length = 1, max_length = 256)]
    pub model: Option<String>,
    #[param(value_type = Option<IfBusy>)]
    pub if_busy: Option<String>,
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub agent: Option<String>,
    #[param(value_type = Option<OnDisconnect>)]
    pub on_disconnect: Option<String>,
}

impl ChatQuery {
    pub fn into_input(self) -> Result<ChatInput, ApiError> {
        fn number<T: std::str::FromStr>(
            field: &str,
            raw: Option<String>,
            errors: &mut Vec<FieldError>,
        ) -> Option<T> {
            let raw = raw?;
            match raw.trim().parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(FieldError {
                        loc: vec![json!("query"), json!(field)],
                        msg: "Input should be a valid number".into(),
                        kind: "type_error".into(),
                    });
                    None
                }
            }
        }
        let mut errors = Vec::new();
        let input = ChatInput {
            temperature: number("temperature", self.temperature, &mut errors),
            max_tokens: number("max_tokens", self.max_tokens, &mut errors),
            max_completion_tokens: number(
                "max_completion_tokens",
                self.max_completion_tokens,
                &mut errors,
            ),
            message: self.message,
            conversation_id: self.conversation_id,
            system_prompt: self.system_prompt,
            model: self.model,
            if_busy: self.if_busy,
            agent: self.agent,
            on_disconnect: self.on_disconnect,
        };
        if errors.is_empty() {
            Ok(input)
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// `POST /chat`: one turn, answered whole.
#[utoipa::path(post, path = "/chat", tag = "chat", request_body = ChatInput,
    responses((status = 200, body = ChatResponse),
        (status = 404, description = "The conversation was deleted while this turn ran; the reply was not saved", body = DetailError),
        (status = 409, description = "The conversation is busy with another turn: at once with `if_busy: reject`, else after TURN_WAIT_SECS (Retry-After set); or it belongs to another agent than the one named (no Retry-After)", body = DetailError),
        ModelCallErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn create_chat(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(input): AppJson<ChatInput>,
) -> Result<Json<ChatResponse>, ApiError> {
    let turn = input.validate(&state.config, &state.agents, "body")?;
    let outcome = agent::run_turn(
        state.llm.as_ref(),
        state.conversations.as_ref(),
        &state.agents,
        &caller.owner,
        turn,
    )
    .await?;
    Ok(Json(ChatResponse {
        response: outcome.response,
        conversation_id: outcome.conversation_id,
        tokens_used: outcome.tokens_used,
        timestamp: Utc::now(),
        tool_calls: (!outcome.tool_calls.is_empty()).then_some(outcome.tool_calls),
        steps: outcome.steps,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: ChatInput) -> Vec<String> {
        let config = Config::for_tests();
        let agents = Agents::new(&config, Default::default());
        match input.validate(&config, &agents, "body") {
            Ok(_) => vec![],
            Err(ApiError::Validation(f)) => f.iter().map(|f| f.loc[1].to_string()).collect(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn msg(m: &str) -> ChatInput {
        ChatInput {
            message: m.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ranges() {
        assert!(check(msg("hi")).is_empty());
        assert_eq!(check(msg(" ")), vec!["\"message\""]);
        for (t, ok) in [(0.0, true), (2.0, true), (2.5, false), (-0.1, false)] {
            let i = ChatInput {
                temperature: Some(t),
                ..msg("hi")
            };
            assert_eq!(check(i).is_empty(), ok, "{t}");
        }
        for (n, ok) in [(1, true), (4000, true), (0, false), (5000, false)] {
            let i = ChatInput {
                max_tokens: Some(n),
                ..msg("hi")
            };
            assert_eq!(check(i).is_empty(), ok, "{n}");
        }
        let i = ChatInput {
            conversation_id: Some("bad id!".into()),
            ..msg("")
        };
        assert_eq!(check(i).len(), 2);
        // Both names given: max_tokens is used, and the other must be valid too.
        let i = ChatInput {
            max_tokens: Some(10),
            max_completion_tokens: Some(-3),
            ..msg("hi")
        };
        assert_eq!(check(i), vec!["\"max_completion_tokens\""]);
        for (v, ok) in [
            ("wait", true),
            ("reject", true),
            ("later", false),
            ("", false),
        ] {
            let i = ChatInput {
                if_busy: Some(v.into()),
                ..msg("hi")
            };
            assert_eq!(check(i).is_empty(), ok, "{v}");
        }
        let unknown = ChatInput {
            agent: Some("nobody".into()),
            ..msg("hi")
        };
        assert_eq!(check(unknown), vec!["\"agent\""]);
        let named = ChatInput {
            agent: Some("default".into()),
            ..msg("hi")
        };
        assert!(check(named).is_empty());
        let reject = ChatInput {
            if_busy: Some("reject".into()),
            ..msg("hi")
        };
        let config = Config::for_tests();
        let agents = Agents::new(&config, Default::default());
        let turn = reject.validate(&config, &agents, "body").unwrap();
        assert!(turn.turn_wait.is_zero());
    }

    #[test]
    fn ids() {
        assert!(valid_id("abc-DEF_123"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(129)));
        assert!(!valid_id("a/b"));
    }
}
