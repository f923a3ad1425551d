//! The agents a turn can run as: the operator's (`AGENTS_FILE`) and the built-in default (no
//! tools, the request's `system_prompt`, `CHAT_MODEL`: the tutorial's behaviour), with the
//! [`Toolbox`] their tools run in.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::config::agents::{AgentDef, DEFAULT_MAX_STEPS, DEFAULT_TOOL_TIMEOUT};
use crate::metrics::Metrics;
use crate::tools::{Tool, Toolbox};

/// The name of the agent a turn runs as when it names none.
pub const DEFAULT_AGENT: &str = "default";

/// An agent: the file's definition, with its model settled (its own, else `CHAT_MODEL`; the
/// built-in default has none: the request's, else `CHAT_MODEL`).
pub type Agent = AgentDef;

/// The built-in default: no tools, the request's system prompt and model.
fn builtin() -> Agent {
    AgentDef {
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
                let model = d.model.clone().or_else(|| Some(config.chat_model.clone()));
                (d.name.clone(), Arc::new(AgentDef { model, ..d.clone() }))
            })
            .collect();
        by_name
            .entry(DEFAULT_AGENT.into())
            .or_insert_with(|| Arc::new(builtin()));
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
