//! The tools agents call: HTTP tools ([`http`]) and MCP servers ([`mcp`]), behind one
//! [`Toolbox`] built from the agents file at start.
//!
//! A turn resolves its agent's tool references once ([`Toolbox::resolve`]: what the model is
//! offered) and runs the model's calls through [`Toolbox::call`], which never fails the turn:
//! bad arguments, an unknown tool, a non-2xx answer, a timeout, an MCP error result or a server
//! that is down all come back as the error text the model is shown. Every call has its own
//! timeout, and its result is cut to `TOOL_RESULT_MAX_BYTES`. Dropping a call cancels it.

pub mod http;
pub mod mcp;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::AgentsFile;
use crate::config::agents::{ToolRef, mcp_tool_name};
use crate::llm::ToolCall;
use crate::metrics::Metrics;

pub use mcp::McpServer;

/// A tool as the model is offered it, and as `GET /agents/{name}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ToolSpec {
    /// The model-visible name: the HTTP tool's name, or `<server>__<tool>`.
    pub name: String,
    pub description: String,
    /// The tool's JSON Schema.
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// `http`, or `mcp:<server>`.
    pub source: String,
}

/// One resolved tool: what the model sees and how a call reaches it.
#[derive(Clone)]
pub struct Tool {
    pub spec: ToolSpec,
    target: Target,
    /// The compiled `parameters`; `None` when the schema could not be compiled (an MCP
    /// server's; then arguments are only checked to be an object).
    validator: Option<Arc<jsonschema::Validator>>,
}

#[derive(Clone)]
enum Target {
    Http(Arc<http::HttpTool>),
    Mcp {
        server: Arc<McpServer>,
        tool: String,
    },
}

impl Tool {
    /// `validator`: the compiled `parameters`, made once when the tool is listed or loaded
    /// (never per turn).
    fn new(spec: ToolSpec, target: Target, validator: Option<Arc<jsonschema::Validator>>) -> Self {
        Self {
            spec,
            target,
            validator,
        }
    }

    /// The tool in OpenAI's function-tool shape.
    pub fn openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.spec.name,
            "description": self.spec.description,
            "parameters": self.spec.parameters,
        }})
    }
}

/// What one call came to, as the model will see it and as metrics count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome {
    pub result: Result<String, String>,
    /// `ok`, `error`, `invalid_arguments`, `unknown_tool`, `timeout` or `unavailable`.
    pub outcome: &'static str,
    pub duration: Duration,
}

pub struct Toolbox {
    http: BTreeMap<String, Arc<http::HttpTool>>,
    mcp: BTreeMap<String, Arc<McpServer>>,
    max_result: usize,
    metrics: Arc<Metrics>,
}

impl Toolbox {
    pub fn new(file: &AgentsFile, max_result: usize, metrics: Arc<Metrics>) -> Self {
        let mut http = BTreeMap::new();
        // The client is built only when there are HTTP tools: its TLS setup costs memory.
        if !file.http_tools.is_empty() {
            let client = http::client();
            for d in &file.http_tools {
                let tool = http::HttpTool::new(d.clone(), client.clone());
                http.insert(d.name.clone(), Arc::new(tool));
            }
        }
        let mcp = file
            .mcp
            .iter()
            .map(|d| (d.name.clone(), Arc::new(McpServer::new(d.clone()))))
            .collect();
        Self {
            http,
            mcp,
            max_result,
            metrics,
        }
    }

    /// The MCP servers, by name.
    pub fn mcp_servers(&self) -> impl Iterator<Item = &Arc<McpServer>> {
        self.mcp.values()
    }

    /// The tools an agent's references name, now (an MCP server's list as it last listed it;
    /// a name seen twice keeps its first tool).
    pub fn resolve(&self, refs: &[ToolRef]) -> Vec<Tool> {
        let mut out: Vec<Tool> = Vec::new();
        let mut push = |tool: Tool| {
            if !out.iter().any(|t| t.spec.name == tool.spec.name) {
                out.push(tool);
            }
        };
        for r in refs {
            match r {
                ToolRef::Http(name) => {
                    if let Some(t) = self.http.get(name) {
                        push(Tool::new(
                            t.spec(),
                            Target::Http(Arc::clone(t)),
                            t.validator(),
                        ));
                    }
                }
                ToolRef::Mcp { server, tool } => {
                    if let Some(s) = self.mcp.get(server) {
                        match s.tools().iter().find(|t| t.name == *tool) {
                            Some(listed) => push(s.tool(listed)),
                            // Not listed (yet, or the server is down): offered with an open
                            // schema, and a call answers that the server is unavailable.
                            None => push(Tool::new(
                                ToolSpec {
                                    name: mcp_tool_name(server, tool),
                                    description: String::new(),
                                    parameters: json!({"type": "object"}),
                                    source: format!("mcp:{server}"),
                                },
                                Target::Mcp {
                                    server: Arc::clone(s),
                                    tool: tool.clone(),
                                },
                                None,
                            )),
                        }
                    }
                }
                ToolRef::McpAll { server } => {
                    if let Some(s) = self.mcp.get(server) {
                        for listed in s.tools().iter() {
                            push(s.tool(listed));
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs one call of the model among `tools`, within `timeout`; never fails the turn.
    pub async fn call(&self, tools: &[Tool], call: &ToolCall, timeout: Duration) -> CallOutcome {
        let started = Instant::now();
        let name = &call.function.name;
        let tool = tools.iter().find(|t| t.spec.name == *name);
        let (result, outcome) = match tool {
            None => (
                Err(format!("unknown tool `{}`", truncate(name.clone(), 64))),
                "unknown_tool",
            ),
            Some(tool) => match arguments(tool, &call.function.arguments) {
                Err(why) => (Err(why), "invalid_arguments"),
                Ok(args) => {
                    let run = async {
                        match &tool.target {
                            Target::Http(t) => t.call(&args, self.max_result).await,
                            Target::Mcp { server, tool } => server.call(tool, args).await,
                        }
                    };
                    match tokio::time::timeout(timeout, run).await {
                        Ok(Ok(text)) => (Ok(text), "ok"),
                        Ok(Err(ToolError::Failed(why))) => (Err(why), "error"),
                        Ok(Err(ToolError::Unavailable(why))) => (Err(why), "unavailable"),
                        Err(_) => (
                            Err(format!(
                                "the tool did not answer within {}s",
                                timeout.as_secs_f64()
                            )),
                            "timeout",
                        ),
                    }
                }
            },
        };
        let duration = started.elapsed();
        let label = if tool.is_some() {
            name.as_str()
        } else {
            "unknown"
        };
        self.metrics.record_tool_call(label, outcome, duration);
        let max = self.max_result;
        CallOutcome {
            result: result
                .map(|t| truncate(t, max))
                .map_err(|t| truncate(t, max)),
            outcome,
            duration,
        }
    }

    /// Stops every MCP server (children are ended; none is left behind).
    pub async fn stop(&self) {
        futures::future::join_all(self.mcp.values().map(|s| s.stop())).await;
    }
}

/// Why a reached tool gave no result.
#[derive(Debug)]
pub enum ToolError {
    /// The tool answered with an error (non-2xx, an MCP `isError` result, a protocol error).
    Failed(String),
    /// It could not be reached (a server that is down).
    Unavailable(String),
}

/// The call's arguments as a JSON object checked against the tool's schema.
fn arguments(tool: &Tool, raw: &str) -> Result<Map<String, Value>, String> {
    let raw = raw.trim();
    let value: Value = if raw.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(raw).map_err(|e| format!("the arguments are not valid JSON: {e}"))?
    };
    if !value.is_object() {
        return Err("the arguments must be a JSON object".into());
    }
    if let Some(v) = &tool.validator {
        let errors: Vec<String> = v
            .iter_errors(&value)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "the arguments do not match the tool's parameters: {}",
                errors.join("; ")
            ));
        }
    }
    match value {
        Value::Object(args) => Ok(args),
        _ => Err("the arguments must be a JSON object".into()),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, then `[truncated]`.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("[truncated]");
    text
}

/// Compiles a tool's schema once; `None` (arguments then only checked to be an object) when it
/// does not compile.
pub(crate) fn compile(schema: &Value) -> Option<Arc<jsonschema::Validator>> {
    jsonschema::validator_for(schema).ok().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("short".into(), 10), "short");
        assert_eq!(truncate("abcdef".into(), 3), "abc[truncated]");
        // "é" is two bytes: a cut inside it moves back.
        assert_eq!(truncate("aé".into(), 2), "a[truncated]");
    }

    fn tool(parameters: Value) -> Tool {
        let def = crate::config::agents::HttpToolDef {
            name: "t".into(),
            description: String::new(),
            url: "http://127.0.0.1:9/".into(),
            headers: vec![],
            parameters: parameters.clone(),
        };
        let t = Arc::new(http::HttpTool::new(def, http::client()));
        let v = t.validator();
        Tool::new(t.spec(), Target::Http(t), v)
    }

    #[test]
    fn arguments_are_an_object_that_matches_the_schema() {
        let t = tool(
            json!({"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}),
        );
        assert!(arguments(&t, r#"{"id": "42"}"#).is_ok());
        assert!(
            arguments(&t, "not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(arguments(&t, "[1]").unwrap_err().contains("JSON object"));
        let e = arguments(&t, r#"{"id": 42}"#).unwrap_err();
        assert!(e.contains("/id") && e.contains("parameters"), "{e}");
        assert!(arguments(&t, "{}").unwrap_err().contains("required"));
        // No arguments at all read as {}.
        assert!(arguments(&tool(json!({"type": "object"})), "").is_ok());
    }
}
