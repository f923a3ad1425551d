//! The agents a turn can run as: the operator's (`AGENTS_FILE`) and the built-in default (no
//! tools, the request's `system_prompt`, `CHAT_MODEL`: the tutorial's behaviour), with the
//! [`Toolbox`] their tools run in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::config::agents::{AgentDef, DEFAULT_MAX_STEPS, DEFAULT_TOOL_TIMEOUT, ToolRef};
use crate::metrics::Metrics;
use crate::tools::{Tool, Toolbox};

/// The name of the agent a turn runs as when it names none.
pub const DEFAULT_AGENT: &str = "default";

#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub description: String,
    /// The system message; `None`: the request's `system_prompt`.
    pub instructions: Option<String>,
    /// `None`: the request's model (any of `MODELS`), else `CHAT_MODEL`. An agent of the file
    /// always has one (its own, or `CHAT_MODEL`), and a request naming another is refused.
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Vec<ToolRef>,
    pub max_steps: u32,
    pub parallel_tool_calls: Option<bool>,
    pub tool_timeout: Duration,
}

impl Agent {
    fn builtin() -> Self {
        Self {
            name: DEFAULT_AGENT.into(),
            description: "The built-in default: no tools, the request's system_prompt".into(),
            instructions: None,
            model: None,
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
            parallel_tool_calls: None,
            tool_timeout: DEFAULT_TOOL_TIMEOUT,
        }
    }

    fn from_def(d: &AgentDef, chat_model: &str) -> Self {
        Self {
            name: d.name.clone(),
            description: d.description.clone(),
            instructions: d.instructions.clone(),
            model: Some(d.model.clone().unwrap_or_else(|| chat_model.to_owned())),
            temperature: d.temperature,
            max_tokens: d.max_tokens,
            tools: d.tools.clone(),
            max_steps: d.max_steps,
            parallel_tool_calls: d.parallel_tool_calls,
            tool_timeout: d.tool_timeout,
        }
    }

    pub fn has_tools(&self) -> bool {
        !self.tools.is_empty()
    }
}

pub struct Agents {
    by_name: BTreeMap<String, Arc<Agent>>,
    pub toolbox: Arc<Toolbox>,
}

impl Agents {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let file = &config.agents;
        let mut by_name: BTreeMap<String, Arc<Agent>> = file
            .agents
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    Arc::new(Agent::from_def(d, &config.chat_model)),
                )
            })
            .collect();
        by_name
            .entry(DEFAULT_AGENT.into())
            .or_insert_with(|| Arc::new(Agent::builtin()));
        Self {
            by_name,
            toolbox: Arc::new(Toolbox::new(file, config.tool_result_max_bytes, metrics)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Agent>> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.by_name.values()
    }

    /// The agent's tools as they resolve now.
    pub fn tools_of(&self, agent: &Agent) -> Vec<Tool> {
        self.toolbox.resolve(&agent.tools)
    }

    /// Connects the MCP servers (each supervised in a task of its own).
    pub fn start(&self, runner: &super::TaskRunner) {
        for server in self.toolbox.mcp_servers() {
            server.start(runner);
        }
    }
}
