//! `GET /agents` and `GET /agents/{name}`: the agents a request may name, and their tools as
//! the model is offered them. Nothing of how a tool is reached (URLs, commands, headers) is
//! shown.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::agent::Agent;
use crate::error::ApiError;
use crate::middleware::auth::Caller;
use crate::openapi::RecordErrors;
use crate::state::AppState;
use crate::tools::ToolSpec;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentSummary {
    pub name: String,
    pub description: String,
    /// `null` for the built-in default: the request's model (one of `MODELS`), else `CHAT_MODEL`.
    pub model: Option<String>,
    /// The model-visible names of its tools.
    pub tools: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentDetail {
    pub name: String,
    pub description: String,
    pub model: Option<String>,
    pub max_steps: u32,
    pub tools: Vec<ToolSpec>,
}

fn tools(state: &AppState, agent: &Agent) -> Vec<ToolSpec> {
    state
        .agents
        .tools_of(agent)
        .into_iter()
        .map(|t| t.spec)
        .collect()
}

#[utoipa::path(get, path = "/agents", tag = "agents",
    responses((status = 200, body = AgentList), RecordErrors),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn list_agents(State(state): State<AppState>, _caller: Caller) -> Json<AgentList> {
    let agents = state
        .agents
        .all()
        .map(|a| AgentSummary {
            name: a.name.clone(),
            description: a.description.clone(),
            model: a.model.clone(),
            tools: tools(&state, a).into_iter().map(|t| t.name).collect(),
        })
        .collect();
    Json(AgentList { agents })
}

#[utoipa::path(get, path = "/agents/{name}", tag = "agents", params(("name" = String, Path)),
    responses((status = 200, body = AgentDetail), RecordErrors),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn get_agent(
    State(state): State<AppState>,
    _caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AgentDetail>, ApiError> {
    let agent = state
        .agents
        .get(&name)
        .ok_or(ApiError::NotFound { kind: "agent" })?;
    Ok(Json(AgentDetail {
        name: agent.name.clone(),
        description: agent.description.clone(),
        model: agent.model.clone(),
        max_steps: agent.max_steps,
        tools: tools(&state, agent),
    }))
}
