//! `GET`/`DELETE /conversation/{id}` and `GET /conversations` (the caller's own, newest first).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::{DEFAULT_AGENT, ToolCallView};
use crate::error::ApiError;
use crate::extract::AppQuery;
use crate::llm::Message;
use crate::middleware::auth::Caller;
use crate::openapi::{DetailError, RecordErrors, ValidationError};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationResponse {
    pub conversation_id: String,
    /// The agent it belongs to (the agent of its first turn).
    pub agent: String,
    pub messages: Vec<MessageView>,
    pub message_count: usize,
}

/// A stored message as clients see it: `{role, content}`, an assistant's `tool_calls` as
/// `[{id, name, arguments}]` (arguments parsed, or the model's text), a tool result's
/// `tool_call_id`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            tool_calls: m
                .tool_calls
                .map(|calls| calls.iter().map(ToolCallView::call).collect()),
            role: m.role,
            content: m.content,
            tool_call_id: m.tool_call_id,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationListItem {
    pub conversation_id: String,
    pub message_count: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationListItem>,
    pub count: usize,
}

/// `?limit=` of the list routes: 1..=1000, default 100.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many, newest first (1 to 1000; default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

impl ListQuery {
    pub fn limit(&self) -> Result<usize, ApiError> {
        match &self.limit {
            None => Ok(100),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(ApiError::Validation(vec![crate::error::FieldError {
                    loc: vec![json!("query"), json!("limit")],
                    msg: "Input should be a whole number from 1 to 1000".into(),
                    kind: "value_out_of_range".into(),
                }])),
            },
        }
    }
}

#[utoipa::path(get, path = "/conversation/{id}", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, body = ConversationResponse), RecordErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ConversationResponse>, ApiError> {
    let conv = state
        .conversations
        .get(&caller.owner, &id)
        .await?
        .ok_or(ApiError::NotFound {
            kind: "conversation",
        })?;
    Ok(Json(ConversationResponse {
        conversation_id: conv.id,
        agent: conv.agent.unwrap_or_else(|| DEFAULT_AGENT.to_owned()),
        message_count: conv.messages.len(),
        messages: conv.messages.into_iter().map(MessageView::from).collect(),
    }))
}

#[utoipa::path(delete, path = "/conversation/{id}", tag = "conversations", params(("id" = String, Path)),
    responses((status = 200, description = "`{\"status\": \"deleted\"}`", body = Object), RecordErrors), security(("api_key" = []), ("bearer" = [])))]
pub async fn delete_conversation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.conversations.delete(&caller.owner, &id).await? {
        Ok(Json(json!({"status": "deleted"})))
    } else {
        Err(ApiError::NotFound {
            kind: "conversation",
        })
    }
}

#[utoipa::path(get, path = "/conversations", tag = "conversations", params(ListQuery),
    responses((status = 200, description = "The caller's conversations, newest first", body = ConversationList),
        (status = 401, body = DetailError), (status = 422, body = ValidationError), (status = 429, body = DetailError)), security(("api_key" = []), ("bearer" = [])))]
pub async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<ConversationList>, ApiError> {
    let list = state
        .conversations
        .list(&caller.owner, query.limit()?)
        .await?;
    let conversations: Vec<ConversationListItem> = list
        .into_iter()
        .map(|c| ConversationListItem {
            conversation_id: c.id,
            message_count: c.message_count,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
        .collect();
    Ok(Json(ConversationList {
        count: conversations.len(),
        conversations,
    }))
}
