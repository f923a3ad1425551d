//! `AGENTS_FILE` (default `agents.toml`): the operator's agents, HTTP tools and MCP servers
//! (API.md, "Agents and tools"). Parsed once at start into checked definitions; a bad file
//! stops the start with the file, the line and the problem. `${NAME}` in a string is replaced
//! by that environment variable (unset: start fails), after parsing, so that an error message
//! never quotes a secret. Everything that starts a process, reaches a URL or sets a header
//! comes from here, never from a request.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::Secret;

/// The checked contents of the agents file (empty when there is none).
#[derive(Debug, Clone, Default)]
pub struct AgentsFile {
    pub agents: Vec<AgentDef>,
    pub http_tools: Vec<HttpToolDef>,
    pub mcp: Vec<McpServerDef>,
}

#[derive(Debug, Clone)]
pub struct AgentDef {
    pub name: String,
    pub description: String,
    /// The system message; replaces a request's `system_prompt`.
    pub instructions: Option<String>,
    /// `None` in the file: `CHAT_MODEL` (the registry fills it in; only the built-in default
    /// has none: the request's model, else `CHAT_MODEL`).
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub tools: Vec<ToolRef>,
    pub max_steps: u32,
    pub parallel_tool_calls: Option<bool>,
    pub tool_timeout: Duration,
}

impl AgentDef {
    pub fn has_tools(&self) -> bool {
        !self.tools.is_empty()
    }
}

/// An agent's reference to a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolRef {
    Http(String),
    Mcp {
        server: String,
        tool: String,
    },
    /// `server/*`: every allowed tool of the server.
    McpAll {
        server: String,
    },
}

#[derive(Debug, Clone)]
pub struct HttpToolDef {
    pub name: String,
    pub description: String,
    pub url: String,
    pub headers: Vec<(String, Secret)>,
    /// The tool's JSON Schema (an object schema), as the model sees it.
    pub parameters: Value,
}

#[derive(Debug, Clone)]
pub struct McpServerDef {
    pub name: String,
    pub transport: McpTransport,
    /// `None`: every tool the server lists.
    pub allowed_tools: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub enum McpTransport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, Secret)>,
        cwd: Option<String>,
    },
    Http {
        url: String,
        headers: Vec<(String, Secret)>,
    },
}

/// The default `max_steps` and `tool_timeout_secs`.
pub const DEFAULT_MAX_STEPS: u32 = 8;
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `name` can be a model-visible tool name: `^[A-Za-z0-9_-]{1,64}$` (also the rule for
/// agent and MCP server names).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The name the model sees for tool `tool` of MCP server `server`.
pub fn mcp_tool_name(server: &str, tool: &str) -> String {
    format!("{server}__{tool}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    agents: BTreeMap<Spanned<String>, AgentToml>,
    #[serde(default)]
    tools: BTreeMap<Spanned<String>, HttpToolToml>,
    #[serde(default)]
    mcp: BTreeMap<Spanned<String>, McpToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentToml {
    #[serde(default)]
    description: Option<Spanned<String>>,
    #[serde(default)]
    instructions: Option<Spanned<String>>,
    #[serde(default)]
    model: Option<Spanned<String>>,
    #[serde(default)]
    temperature: Option<Spanned<f64>>,
    #[serde(default)]
    max_tokens: Option<Spanned<i64>>,
    #[serde(default)]
    tools: Vec<Spanned<String>>,
    #[serde(default)]
    max_steps: Option<Spanned<i64>>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    tool_timeout_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpToolToml {
    #[serde(default)]
    description: Option<Spanned<String>>,
    url: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    parameters: Option<Spanned<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpToml {
    #[serde(default)]
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    allowed_tools: Option<Vec<Spanned<String>>>,
}

/// What the file is checked against.
pub struct Limits<'a> {
    pub model_allowed: &'a dyn Fn(&str) -> bool,
    pub max_output_tokens: u32,
}

/// Parses and checks the agents file `text` (named `file` in errors); `env` looks up `${NAME}`.
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    limits: &Limits<'_>,
) -> Result<AgentsFile, String> {
    let line = |span: std::ops::Range<usize>| {
        text.get(..span.start)
            .map_or(1, |t| t.bytes().filter(|b| *b == b'\n').count() + 1)
    };
    let at =
        |span: std::ops::Range<usize>, what: String| format!("{file}, line {}: {what}", line(span));
    // toml's own message names the line and column; its text may quote the line, which holds
    // `${NAME}` rather than any secret (variables are replaced only after parsing).
    let raw: FileToml = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let expand = |s: &Spanned<String>| -> Result<String, String> {
        expand_vars(s.get_ref(), env).map_err(|e| at(s.span(), e))
    };
    let pairs = |m: &BTreeMap<String, Spanned<String>>| -> Result<Vec<(String, Secret)>, String> {
        m.iter()
            .map(|(k, v)| Ok((k.clone(), Secret::new(expand(v)?))))
            .collect()
    };

    let mut mcp = Vec::new();
    for (name, m) in &raw.mcp {
        if !valid_name(name.get_ref()) || name.get_ref().contains("__") {
            return Err(at(
                name.span(),
                format!(
                    "bad MCP server name `{}`: 1 to 64 of A-Z, a-z, 0-9, _ or -, without `__`",
                    name.get_ref()
                ),
            ));
        }
        let transport = match (&m.command, &m.url) {
            (Some(command), None) => {
                if !m.headers.is_empty() {
                    return Err(at(
                        name.span(),
                        "`headers` is for a server with `url`".into(),
                    ));
                }
                McpTransport::Stdio {
                    command: expand(command)?,
                    args: m.args.iter().map(expand).collect::<Result<_, _>>()?,
                    env: pairs(&m.env)?,
                    cwd: m.cwd.as_ref().map(expand).transpose()?,
                }
            }
            (None, Some(url)) => {
                if !m.args.is_empty() || !m.env.is_empty() || m.cwd.is_some() {
                    return Err(at(
                        name.span(),
                        "`args`, `env` and `cwd` are for a server with `command`".into(),
                    ));
                }
                let u = expand(url)?;
                check_url(&u).map_err(|e| at(url.span(), e))?;
                McpTransport::Http {
                    url: u,
                    headers: pairs(&m.headers)?,
                }
            }
            _ => {
                return Err(at(
                    name.span(),
                    format!(
                        "MCP server `{}` needs exactly one of `command` (stdio) or `url` (Streamable HTTP)",
                        name.get_ref()
                    ),
                ));
            }
        };
        let allowed_tools = match &m.allowed_tools {
            None => None,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for t in list {
                    if !valid_name(&mcp_tool_name(name.get_ref(), t.get_ref())) {
                        return Err(at(
                            t.span(),
                            format!(
                                "`{}__{}` is not a valid tool name for the model (1 to 64 of A-Z, a-z, 0-9, _ or -)",
                                name.get_ref(),
                                t.get_ref()
                            ),
                        ));
                    }
                    out.push(t.get_ref().clone());
                }
                Some(out)
            }
        };
        mcp.push(McpServerDef {
            name: name.get_ref().clone(),
            transport,
            allowed_tools,
        });
    }

    let mut http_tools = Vec::new();
    for (name, t) in &raw.tools {
        if !valid_name(name.get_ref()) || name.get_ref().contains("__") {
            return Err(at(
                name.span(),
                format!(
                    "bad tool name `{}`: 1 to 64 of A-Z, a-z, 0-9, _ or -, without `__` (kept for MCP tools)",
                    name.get_ref()
                ),
            ));
        }
        let url = expand(&t.url)?;
        check_url(&url).map_err(|e| at(t.url.span(), e))?;
        let parameters = match &t.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p) => {
                let schema = p.get_ref();
                if !schema.is_object() {
                    return Err(at(
                        p.span(),
                        "`parameters` must be a JSON Schema object".into(),
                    ));
                }
                jsonschema::validator_for(schema).map_err(|e| {
                    at(
                        p.span(),
                        format!("`parameters` is not a valid JSON Schema: {e}"),
                    )
                })?;
                schema.clone()
            }
        };
        http_tools.push(HttpToolDef {
            name: name.get_ref().clone(),
            description: t
                .description
                .as_ref()
                .map(expand)
                .transpose()?
                .unwrap_or_default(),
            url,
            headers: pairs(&t.headers)?,
            parameters,
        });
    }

    let mut agents = Vec::new();
    for (name, a) in &raw.agents {
        if !valid_name(name.get_ref()) {
            return Err(at(
                name.span(),
                format!(
                    "bad agent name `{}`: 1 to 64 of A-Z, a-z, 0-9, _ or -",
                    name.get_ref()
                ),
            ));
        }
        if let Some(m) = &a.model
            && !(limits.model_allowed)(m.get_ref())
        {
            return Err(at(
                m.span(),
                format!("model `{}` is not one of MODELS", m.get_ref()),
            ));
        }
        if let Some(t) = &a.temperature
            && !(0.0..=2.0).contains(t.get_ref())
        {
            return Err(at(t.span(), "temperature must be between 0 and 2".into()));
        }
        let ranged =
            |v: &Option<Spanned<i64>>, what: &str, max: i64| -> Result<Option<i64>, String> {
                match v {
                    Some(n) if !(1..=max).contains(n.get_ref()) => {
                        Err(at(n.span(), format!("{what} must be between 1 and {max}")))
                    }
                    Some(n) => Ok(Some(*n.get_ref())),
                    None => Ok(None),
                }
            };
        let max_tokens = ranged(
            &a.max_tokens,
            "max_tokens",
            i64::from(limits.max_output_tokens),
        )?;
        let max_steps = ranged(&a.max_steps, "max_steps", 100)?;
        let tool_timeout = ranged(&a.tool_timeout_secs, "tool_timeout_secs", 3600)?;
        let mut tools = Vec::with_capacity(a.tools.len());
        let mut visible = HashSet::new();
        for r in &a.tools {
            let text = r.get_ref();
            let (tool, names) = match text.split_once('/') {
                None => {
                    if !http_tools.iter().any(|t| t.name == *text) {
                        return Err(at(r.span(), format!("no tool `{text}` in [tools]")));
                    }
                    (ToolRef::Http(text.clone()), vec![text.clone()])
                }
                Some((server, tool)) => {
                    let Some(def) = mcp.iter().find(|m| m.name == server) else {
                        return Err(at(r.span(), format!("no MCP server `{server}` in [mcp]")));
                    };
                    if tool == "*" {
                        let names = def
                            .allowed_tools
                            .iter()
                            .flatten()
                            .map(|t| mcp_tool_name(server, t))
                            .collect();
                        (
                            ToolRef::McpAll {
                                server: server.into(),
                            },
                            names,
                        )
                    } else {
                        if !valid_name(&mcp_tool_name(server, tool)) {
                            return Err(at(
                                r.span(),
                                format!(
                                    "`{server}__{tool}` is not a valid tool name for the model"
                                ),
                            ));
                        }
                        if def
                            .allowed_tools
                            .as_ref()
                            .is_some_and(|a| !a.iter().any(|t| t == tool))
                        {
                            return Err(at(
                                r.span(),
                                format!(
                                    "`{tool}` is not in the allowed_tools of MCP server `{server}`"
                                ),
                            ));
                        }
                        let name = mcp_tool_name(server, tool);
                        (
                            ToolRef::Mcp {
                                server: server.into(),
                                tool: tool.into(),
                            },
                            vec![name],
                        )
                    }
                }
            };
            for n in names {
                if !visible.insert(n.clone()) {
                    return Err(at(
                        r.span(),
                        format!("agent `{}` has the tool name `{n}` twice", name.get_ref()),
                    ));
                }
            }
            tools.push(tool);
        }
        agents.push(AgentDef {
            name: name.get_ref().clone(),
            description: a
                .description
                .as_ref()
                .map(expand)
                .transpose()?
                .unwrap_or_default(),
            instructions: a.instructions.as_ref().map(expand).transpose()?,
            model: a.model.as_ref().map(|m| m.get_ref().clone()),
            temperature: a.temperature.as_ref().map(|t| *t.get_ref()),
            max_tokens: max_tokens.map(|n| n as u32),
            tools,
            max_steps: max_steps.map_or(DEFAULT_MAX_STEPS, |n| n as u32),
            parallel_tool_calls: a.parallel_tool_calls,
            tool_timeout: tool_timeout
                .map_or(DEFAULT_TOOL_TIMEOUT, |n| Duration::from_secs(n as u64)),
        });
    }
    Ok(AgentsFile {
        agents,
        http_tools,
        mcp,
    })
}

fn check_url(url: &str) -> Result<(), String> {
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(()),
        _ => Err("a URL must start with http:// or https://".into()),
    }
}

/// Replaces every `${NAME}` in `s` by the variable's value; an unset one is an error naming
/// the variable (never a value).
fn expand_vars(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err("`${` without a closing `}`".into());
        };
        let name = &after[..end];
        let value =
            env(name).ok_or_else(|| format!("the environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[agents.support]
description = "Answers order questions"
instructions = "You are the support agent of ACME."
model = "gpt-4o-mini"
temperature = 0.2
max_tokens = 800
tools = ["lookup_order", "time/get_current_time", "docs/*"]
max_steps = 8
parallel_tool_calls = true
tool_timeout_secs = 30

[tools.lookup_order]
description = "Look up an order by its id"
url = "http://orders.internal/lookup"
headers = { Authorization = "Bearer ${ORDERS_TOKEN}" }
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }

[mcp.time]
command = "python3"
args = ["-m", "mcp_server_time"]
env = { TZ = "UTC" }
allowed_tools = ["get_current_time"]

[mcp.docs]
url = "http://127.0.0.1:9000/mcp"
headers = { Authorization = "Bearer ${DOCS_TOKEN}" }
"#;

    fn env(name: &str) -> Option<String> {
        matches!(name, "ORDERS_TOKEN" | "DOCS_TOKEN").then(|| format!("secret-{name}"))
    }

    fn check(text: &str) -> Result<AgentsFile, String> {
        let allowed = |m: &str| m == "gpt-4o-mini";
        parse(
            text,
            "agents.toml",
            &env,
            &Limits {
                model_allowed: &allowed,
                max_output_tokens: 4000,
            },
        )
    }

    #[test]
    fn the_contract_example_parses() {
        let f = check(EXAMPLE).unwrap();
        let a = &f.agents[0];
        assert_eq!(a.name, "support");
        assert_eq!(a.max_steps, 8);
        assert_eq!(a.max_tokens, Some(800));
        assert_eq!(
            a.tools,
            vec![
                ToolRef::Http("lookup_order".into()),
                ToolRef::Mcp {
                    server: "time".into(),
                    tool: "get_current_time".into()
                },
                ToolRef::McpAll {
                    server: "docs".into()
                },
            ]
        );
        let t = &f.http_tools[0];
        assert_eq!(t.headers[0].1.expose(), "Bearer secret-ORDERS_TOKEN");
        // Debug never shows a secret.
        assert!(!format!("{f:?}").contains("secret-"));
        assert_eq!(t.parameters["required"][0], "order_id");
        assert!(
            matches!(&f.mcp.iter().find(|m| m.name == "docs").unwrap().transport, McpTransport::Http { url, .. } if url.ends_with("/mcp"))
        );
    }

    fn err(text: &str) -> String {
        check(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_problem() {
        let e = err("[agents.a]\nmodle = \"x\"\n");
        assert!(
            e.contains("agents.toml") && e.contains("line 2") && e.contains("modle"),
            "{e}"
        );
        let e = err("\n[agents.\"bad name\"]\n");
        assert!(e.contains("line 2") && e.contains("bad agent name"), "{e}");
        let e = err("[agents.a]\ntools = [\"nope\"]\n");
        assert!(e.contains("line 2") && e.contains("no tool `nope`"), "{e}");
        let e = err("[agents.a]\ntools = [\"srv/x\"]\n");
        assert!(e.contains("no MCP server `srv`"), "{e}");
        let e = err("[agents.a]\nmodel = \"gpt-5\"\n");
        assert!(e.contains("line 2") && e.contains("MODELS"), "{e}");
        let dup = "[agents.a]\ntools = [\"t\", \"t\"]\n[tools.t]\nurl = \"http://x\"\n";
        assert!(err(dup).contains("twice"), "{}", err(dup));
        let e = err("[tools.t]\nurl = \"http://x\"\nparameters = { type = 12 }\n");
        assert!(e.contains("line 3") && e.contains("JSON Schema"), "{e}");
        let e = err("[tools.t]\nurl = \"ftp://x\"\n");
        assert!(e.contains("http://"), "{e}");
        let e = err("[mcp.m]\ncommand = \"x\"\nurl = \"http://y\"\n");
        assert!(e.contains("exactly one"), "{e}");
        let e = err("[mcp.m]\ncommand = \"${UNSET_VAR}\"\n");
        assert!(
            e.contains("line 2") && e.contains("UNSET_VAR is not set"),
            "{e}"
        );
        let e = err(
            "[mcp.m]\ncommand = \"x\"\nallowed_tools = [\"a\"]\n[agents.a]\ntools = [\"m/b\"]\n",
        );
        assert!(e.contains("allowed_tools"), "{e}");
        let e = err("[agents.a]\nmax_steps = 0\n");
        assert!(e.contains("max_steps"), "{e}");
    }

    #[test]
    fn variables() {
        assert_eq!(
            expand_vars("a ${ORDERS_TOKEN} b", &env).unwrap(),
            "a secret-ORDERS_TOKEN b"
        );
        assert_eq!(expand_vars("plain $x {y}", &env).unwrap(), "plain $x {y}");
        assert!(expand_vars("${NOPE}", &env).unwrap_err().contains("NOPE"));
        assert!(expand_vars("${open", &env).is_err());
    }
}
