//! MCP servers through the official Rust SDK (`rmcp`): a child process over stdio, or a
//! Streamable HTTP server. Each configured server has a supervisor task that connects
//! (`initialize`), lists its tools, re-lists them on `notifications/tools/list_changed`, and,
//! when the connection ends (a child that exits, a server that goes away), connects again with
//! backoff (0.2 s doubling to 30 s). While it is down its tools stay offered and a call answers
//! the model that the server is unavailable. [`McpServer::stop`] ends the supervisor and the
//! child (its whole process group: none is left behind).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Target, Tool, ToolError, ToolSpec};
use crate::config::agents::{McpServerDef, McpTransport, mcp_tool_name, valid_name};

/// A tool as the server listed it.
#[derive(Clone)]
pub struct Listed {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    /// `input_schema` compiled, once per listing.
    pub validator: Option<Arc<jsonschema::Validator>>,
}

pub struct McpServer {
    def: McpServerDef,
    /// The connection while there is one.
    peer: RwLock<Option<Peer<RoleClient>>>,
    /// The tools as last listed (kept while the server is down).
    tools: RwLock<Arc<Vec<Listed>>>,
    stop: CancellationToken,
    /// Set when the supervisor has ended (after [`McpServer::stop`]).
    stopped: CancellationToken,
    started: AtomicBool,
}

/// The client side of the session: it hears `notifications/tools/list_changed`.
struct Handler {
    changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `initialize` and the first `tools/list` must be done within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl McpServer {
    pub fn new(def: McpServerDef) -> Self {
        Self {
            def,
            peer: RwLock::new(None),
            tools: RwLock::new(Arc::new(Vec::new())),
            stop: CancellationToken::new(),
            stopped: CancellationToken::new(),
            started: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Whether the server is connected now (for `/ready`).
    pub fn connected(&self) -> bool {
        self.peer.read().is_ok_and(|p| p.is_some())
    }

    /// The allowed tools as last listed.
    pub fn tools(&self) -> Arc<Vec<Listed>> {
        self.tools
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_default()
    }

    pub(super) fn tool(self: &Arc<Self>, listed: &Listed) -> Tool {
        Tool::new(
            ToolSpec {
                name: mcp_tool_name(&self.def.name, &listed.name),
                description: listed.description.clone(),
                parameters: listed.input_schema.clone(),
                source: format!("mcp:{}", self.def.name),
            },
            Target::Mcp {
                server: Arc::clone(self),
                tool: listed.name.clone(),
            },
            listed.validator.clone(),
        )
    }

    /// Starts the supervisor (once), on the runner: shutdown ends it (and the child) at the
    /// latest when the runner stops.
    pub fn start(self: &Arc<Self>, runner: &crate::agent::TaskRunner) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let me = Arc::clone(self);
        runner.spawn_until_shutdown(async move {
            // Dropped however the supervisor ends: stopped, or dropped by the runner's stop.
            let _ended = me.stopped.clone().drop_guard();
            me.supervise().await;
            me.set_peer(None);
        });
    }

    /// Ends the connection (and the child) and the supervisor; waits for both, at most 5 s.
    pub async fn stop(&self) {
        self.stop.cancel();
        if self.started.load(Ordering::Relaxed) {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.stopped.cancelled()).await;
        }
    }

    fn set_peer(&self, peer: Option<Peer<RoleClient>>) {
        if let Ok(mut p) = self.peer.write() {
            *p = peer;
        }
    }

    async fn supervise(&self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let changed = Arc::new(Notify::new());
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(Arc::clone(&changed)));
            let session = tokio::select! {
                () = self.stop.cancelled() => return,
                s = connect => s,
            };
            match session {
                Ok(Ok(service)) => {
                    tracing::info!(server = %self.def.name, tools = self.tools().len(), "MCP server connected");
                    backoff = BACKOFF_FIRST;
                    self.serve(service, changed).await;
                    if self.stop.is_cancelled() {
                        return;
                    }
                    tracing::warn!(server = %self.def.name, "MCP server disconnected; reconnecting");
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.def.name, error = %e, "MCP server could not be connected");
                }
                Err(_) => {
                    tracing::warn!(server = %self.def.name, "MCP server did not initialize in time");
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Opens a session and lists the tools.
    async fn connect(
        &self,
        changed: Arc<Notify>,
    ) -> Result<RunningService<RoleClient, Handler>, String> {
        let handler = Handler { changed };
        let service = match &self.def.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args);
                for (k, v) in env {
                    cmd.env(k, v.expose());
                }
                if let Some(dir) = cwd {
                    cmd.current_dir(dir);
                }
                let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
                // Its own process group, killed whole: a launcher's children go with it.
                wrapped
                    .wrap(process_wrap::tokio::ProcessGroup::leader())
                    .wrap(process_wrap::tokio::KillOnDrop);
                let (transport, _) = TokioChildProcess::builder(wrapped)
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                handler.serve(transport).await.map_err(|e| e.to_string())?
            }
            McpTransport::Http { url, headers } => {
                let mut custom = HashMap::new();
                for (k, v) in headers {
                    let name = axum::http::HeaderName::try_from(k.as_str())
                        .map_err(|_| format!("bad header name `{k}`"))?;
                    let value = axum::http::HeaderValue::try_from(v.expose())
                        .map_err(|_| format!("bad value for header `{k}`"))?;
                    custom.insert(name, value);
                }
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(custom);
                let transport = StreamableHttpClientTransport::from_config(config);
                handler.serve(transport).await.map_err(|e| e.to_string())?
            }
        };
        self.list(service.peer()).await?;
        Ok(service)
    }

    /// Lists the tools and keeps the allowed ones whose model-visible name is valid.
    async fn list(&self, peer: &Peer<RoleClient>) -> Result<(), String> {
        let tools = peer.list_all_tools().await.map_err(|e| e.to_string())?;
        let allowed = self.def.allowed_tools.as_ref();
        let mut out = Vec::with_capacity(tools.len());
        for tool in tools {
            let Ok(v) = serde_json::to_value(&tool) else {
                continue;
            };
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            if allowed.is_some_and(|a| !a.contains(&name)) {
                continue;
            }
            if !valid_name(&mcp_tool_name(&self.def.name, &name)) {
                tracing::warn!(server = %self.def.name, tool = %name, "MCP tool skipped: its name is not valid for a model");
                continue;
            }
            let input_schema = v
                .get("inputSchema")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            out.push(Listed {
                description: v["description"].as_str().unwrap_or_default().to_owned(),
                validator: super::compile(&input_schema),
                input_schema,
                name,
            });
        }
        if let Ok(mut t) = self.tools.write() {
            *t = Arc::new(out);
        }
        Ok(())
    }

    /// Holds a session until it ends or the server is stopped; re-lists on list_changed.
    async fn serve(&self, service: RunningService<RoleClient, Handler>, changed: Arc<Notify>) {
        let peer = service.peer().clone();
        self.set_peer(Some(peer.clone()));
        let token = service.cancellation_token();
        let mut waiting = Box::pin(service.waiting());
        loop {
            tokio::select! {
                () = self.stop.cancelled() => {
                    self.set_peer(None);
                    token.cancel();
                    // The child is ended by the transport's close (and by its group's kill).
                    let _ = tokio::time::timeout(Duration::from_secs(4), &mut waiting).await;
                    return;
                }
                _ = &mut waiting => break,
                () = changed.notified() => {
                    if let Err(e) = self.list(&peer).await {
                        tracing::warn!(server = %self.def.name, error = %e, "MCP tools/list failed");
                    }
                }
            }
        }
        self.set_peer(None);
    }

    /// Calls tool `name` with `args`.
    pub(super) async fn call(
        &self,
        name: &str,
        args: Map<String, Value>,
    ) -> Result<String, ToolError> {
        let peer = self.peer.read().ok().and_then(|p| p.clone());
        let Some(peer) = peer else {
            return Err(ToolError::Unavailable(format!(
                "the MCP server `{}` is not available",
                self.def.name
            )));
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(args);
        let result = peer.call_tool(params).await.map_err(|e| match e {
            rmcp::ServiceError::McpError(e) => ToolError::Failed(e.message.to_string()),
            rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_) => {
                ToolError::Unavailable(format!(
                    "the MCP server `{}` is not available",
                    self.def.name
                ))
            }
            other => ToolError::Failed(other.to_string()),
        })?;
        let v = serde_json::to_value(&result).unwrap_or_default();
        let text = result_text(&v);
        if v["isError"].as_bool() == Some(true) {
            Err(ToolError::Failed(text))
        } else {
            Ok(text)
        }
    }
}

/// An MCP result as text: its text content joined, else its `structuredContent` as JSON.
fn result_text(v: &Value) -> String {
    let texts: Vec<&str> = v["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "text")
        .filter_map(|c| c["text"].as_str())
        .collect();
    if texts.is_empty()
        && let Some(s) = v.get("structuredContent").filter(|s| !s.is_null())
    {
        return s.to_string();
    }
    texts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_read_as_text() {
        let v = json!({"content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]});
        assert_eq!(result_text(&v), "a\nb");
        let v = json!({"content": [], "structuredContent": {"x": 1}});
        assert_eq!(result_text(&v), r#"{"x":1}"#);
        assert_eq!(result_text(&json!({"content": []})), "");
    }
}
