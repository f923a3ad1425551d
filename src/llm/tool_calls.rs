//! Tool calls in OpenAI's wire shape, and the reassembly of streamed tool-call deltas.
//!
//! A streamed answer sends each call in fragments: the first names its `index`, `id` and
//! function name, later ones add pieces of `arguments` under the same `index`; parallel calls'
//! fragments may interleave. Some servers leave out `index` (then `id`, or the last call, says
//! which) or reuse index 0 for every call with a new `id` (then a new `id` is a new call).

use serde::{Deserialize, Serialize};

/// A tool call in OpenAI's wire shape: `{"id", "type": "function", "function": {"name",
/// "arguments"}}`, the arguments as the model's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

fn function_kind() -> String {
    "function".into()
}

impl ToolCall {
    pub fn function(id: &str, name: &str, arguments: &str) -> Self {
        Self {
            id: id.to_owned(),
            kind: function_kind(),
            function: FunctionCall {
                name: name.to_owned(),
                arguments: arguments.to_owned(),
            },
        }
    }
}

/// One fragment of a streamed tool call, as `choices[0].delta.tool_calls[i]` carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

#[derive(Debug, Default)]
struct Partial {
    index: Option<u32>,
    id: String,
    name: String,
    arguments: String,
}

/// Collects the fragments of one answer's tool calls.
#[derive(Debug, Default)]
pub struct ToolCallAssembler {
    calls: Vec<Partial>,
}

impl ToolCallAssembler {
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn push(&mut self, delta: ToolCallDelta) {
        let id = delta.id.filter(|id| !id.is_empty());
        let same = |c: &Partial| match (&id, delta.index) {
            // A fragment with an index belongs to the last call at that index, unless it names
            // another id (servers that send every call at index 0).
            (id, Some(i)) => {
                c.index == Some(i) && id.as_ref().is_none_or(|id| c.id.is_empty() || *id == c.id)
            }
            (Some(id), None) => c.id == *id,
            (None, None) => true,
        };
        let at = match self.calls.iter().rposition(same) {
            Some(at) => at,
            None => {
                self.calls.push(Partial {
                    index: delta.index,
                    ..Partial::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at];
        if let Some(id) = id {
            call.id = id;
        }
        if let Some(f) = delta.function {
            if let Some(name) = f.name {
                // The name comes whole in one fragment; some servers repeat it.
                if call.name != name {
                    call.name.push_str(&name);
                }
            }
            if let Some(args) = f.arguments {
                call.arguments.push_str(&args);
            }
        }
    }

    /// The calls, in index order (calls without an index after, as they came); a call the
    /// server gave no id gets one.
    pub fn finish(self) -> Vec<ToolCall> {
        let mut calls = self.calls;
        calls.sort_by_key(|c| c.index.unwrap_or(u32::MAX));
        calls
            .into_iter()
            .enumerate()
            .map(|(n, c)| {
                let id = if c.id.is_empty() {
                    format!("call_{n}_{}", uuid::Uuid::new_v4().simple())
                } else {
                    c.id
                };
                ToolCall {
                    id,
                    kind: function_kind(),
                    function: FunctionCall {
                        name: c.name,
                        arguments: c.arguments,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(index: Option<u32>, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            function: Some(FunctionDelta {
                name: name.map(str::to_owned),
                arguments: Some(args.to_owned()),
            }),
        }
    }

    #[test]
    fn interleaved_parallel_calls_come_out_by_index() {
        let mut a = ToolCallAssembler::default();
        a.push(d(Some(0), Some("call_a"), Some("lookup"), ""));
        a.push(d(Some(1), Some("call_b"), Some("time"), "{\"tz\""));
        a.push(d(Some(0), None, None, "{\"order_id\":"));
        a.push(d(Some(1), None, None, ":\"UTC\"}"));
        a.push(d(Some(0), None, None, "\"42\"}"));
        let calls = a.finish();
        assert_eq!(
            calls,
            vec![
                ToolCall::function("call_a", "lookup", "{\"order_id\":\"42\"}"),
                ToolCall::function("call_b", "time", "{\"tz\":\"UTC\"}"),
            ]
        );
    }

    #[test]
    fn a_new_id_at_a_reused_index_is_a_new_call() {
        let mut a = ToolCallAssembler::default();
        a.push(d(Some(0), Some("x"), Some("f"), "{}"));
        a.push(d(Some(0), Some("y"), Some("g"), "{\"a\""));
        a.push(d(Some(0), None, None, ":1}"));
        let calls = a.finish();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0], ToolCall::function("x", "f", "{}"));
        assert_eq!(calls[1], ToolCall::function("y", "g", "{\"a\":1}"));
    }

    #[test]
    fn without_index_ids_or_the_last_call_decide() {
        let mut a = ToolCallAssembler::default();
        a.push(d(None, Some("x"), Some("f"), "{\"a\""));
        a.push(d(None, None, None, ":1}"));
        a.push(d(None, Some("y"), Some("g"), "{}"));
        a.push(d(None, Some("x"), None, ""));
        let calls = a.finish();
        assert_eq!(calls[0], ToolCall::function("x", "f", "{\"a\":1}"));
        assert_eq!(calls[1], ToolCall::function("y", "g", "{}"));
    }

    #[test]
    fn a_call_without_id_gets_one_and_a_repeated_name_is_not_doubled() {
        let mut a = ToolCallAssembler::default();
        a.push(d(Some(0), None, Some("f"), "{"));
        a.push(d(Some(0), None, Some("f"), "}"));
        let calls = a.finish();
        assert_eq!(calls.len(), 1);
        assert!(calls[0].id.starts_with("call_0_"));
        assert_eq!(calls[0].function.name, "f");
        assert_eq!(calls[0].function.arguments, "{}");
    }
}
