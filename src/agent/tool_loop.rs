//! The agent loop as a pure state machine (API.md, "Agents and tools": the loop): messages in,
//! the next action out. It does no I/O: whoever drives it calls the model and runs the tools,
//! and feeds what came back in, so that every rule of the loop is tested without a network.
//!
//! A turn starts with [`ToolLoop::start`] (the first model call). An answer with tool calls
//! appends the assistant message with its `tool_calls` and asks for every call to be run
//! ([`Action::RunTools`], concurrently by the driver); the results come back in call order as
//! `tool` messages, and the model is called again, until an answer without tool calls or
//! `max_steps` model calls (the last one is sent with `tool_choice: "none"`). If that last call
//! still answers with tool calls, the turn ends with its text, and its calls are neither run nor
//! kept. Dropping the machine at any point (a cancelled turn) leaves nothing behind: the new
//! messages are handed out only by [`Action::Finish`].

use crate::llm::{Message, ToolCall, Usage};

/// What the model answered in one step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelAnswer {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// `total_tokens` of this call, when the upstream said.
    pub tokens: Option<u64>,
    /// This call's usage as the upstream reported it (zeros when it did not).
    pub usage: Usage,
}

/// One tool call's outcome, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    pub call_id: String,
    /// The result's text, or what went wrong (fed back to the model as `{"error": ...}`).
    pub outcome: Result<String, String>,
}

/// A call the turn made and what came of it (what `/chat` reports as `tool_calls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call: ToolCall,
    pub outcome: Result<String, String>,
}

/// The turn's end: its answer, what it adds to the conversation, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub response: String,
    /// The messages to append after the turn's own (user) messages: assistant messages with
    /// their tool calls, the tool results, and the final answer, exactly as the model saw them.
    pub new_messages: Vec<Message>,
    /// Model calls made.
    pub steps: u32,
    pub tokens_used: u64,
    /// Every model call's usage, summed.
    pub usage: Usage,
    pub calls: Vec<CallRecord>,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Call the model with [`ToolLoop::messages`] and the agent's tools; with
    /// `tool_choice_none`, tell it to answer without calling any (the last step).
    CallModel {
        tool_choice_none: bool,
    },
    /// Run these calls, concurrently, and feed the results back in this order.
    RunTools(Vec<ToolCall>),
    Finish(Finished),
}

/// A misuse by the driver (a bug of ours, not the model's): results for other calls, or an
/// event in a state that does not expect it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tool loop: {0}")]
pub struct LoopError(&'static str);

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ready,
    AwaitingModel,
    AwaitingTools(Vec<ToolCall>),
    Done,
}

#[derive(Debug, Clone)]
pub struct ToolLoop {
    /// What the model is sent: the history, the turn's own messages, and what the loop added.
    messages: Vec<Message>,
    /// Where the loop's own messages start in `messages`.
    added_from: usize,
    max_steps: u32,
    steps: u32,
    tokens: u64,
    usage: Usage,
    calls: Vec<CallRecord>,
    state: State,
}

impl ToolLoop {
    /// `messages`: the history and the turn's new messages (system, user), as sent; `max_steps`
    /// model calls at most (at least one).
    pub fn new(messages: Vec<Message>, max_steps: u32) -> Self {
        let added_from = messages.len();
        Self {
            messages,
            added_from,
            max_steps: max_steps.max(1),
            steps: 0,
            tokens: 0,
            usage: Usage::default(),
            calls: Vec::new(),
            state: State::Ready,
        }
    }

    /// The messages for the next model call.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Model calls made so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The first action: a model call.
    pub fn start(&mut self) -> Result<Action, LoopError> {
        if self.state != State::Ready {
            return Err(LoopError("started twice"));
        }
        Ok(self.call_model())
    }

    fn call_model(&mut self) -> Action {
        self.steps += 1;
        self.state = State::AwaitingModel;
        Action::CallModel {
            tool_choice_none: self.steps == self.max_steps,
        }
    }

    /// The model's answer to the last [`Action::CallModel`].
    pub fn on_answer(&mut self, answer: ModelAnswer) -> Result<Action, LoopError> {
        if self.state != State::AwaitingModel {
            return Err(LoopError("an answer that was not asked for"));
        }
        self.tokens += answer.tokens.unwrap_or(0);
        self.usage.prompt_tokens += answer.usage.prompt_tokens;
        self.usage.completion_tokens += answer.usage.completion_tokens;
        self.usage.total_tokens += answer.usage.total_tokens;
        if answer.tool_calls.is_empty() || self.steps >= self.max_steps {
            // The end: an answer without calls, or the last step (its calls are dropped).
            self.messages
                .push(Message::new("assistant", answer.content.clone()));
            return Ok(self.finish(answer.content));
        }
        self.messages.push(Message::assistant_calls(
            answer.content,
            answer.tool_calls.clone(),
        ));
        self.state = State::AwaitingTools(answer.tool_calls.clone());
        Ok(Action::RunTools(answer.tool_calls))
    }

    /// The results of the last [`Action::RunTools`], one per call, in any order: they are
    /// appended in the order of the calls.
    pub fn on_results(&mut self, mut results: Vec<ToolResult>) -> Result<Action, LoopError> {
        let State::AwaitingTools(calls) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(LoopError("results that were not asked for"));
        };
        if results.len() != calls.len() {
            return Err(LoopError("not one result per call"));
        }
        for call in calls {
            let Some(i) = results.iter().position(|r| r.call_id == call.id) else {
                return Err(LoopError("a result for an unknown call"));
            };
            let result = results.swap_remove(i);
            let content = match &result.outcome {
                Ok(text) => text.clone(),
                Err(why) => serde_json::json!({ "error": why }).to_string(),
            };
            self.messages.push(Message::tool_result(&call.id, content));
            self.calls.push(CallRecord {
                call,
                outcome: result.outcome,
            });
        }
        Ok(self.call_model())
    }

    fn finish(&mut self, response: String) -> Action {
        self.state = State::Done;
        Action::Finish(Finished {
            response,
            new_messages: self.messages.split_off(self.added_from),
            steps: self.steps,
            tokens_used: self.tokens,
            usage: self.usage,
            calls: std::mem::take(&mut self.calls),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall::function(id, name, args)
    }

    fn answer(content: &str, calls: Vec<ToolCall>, tokens: u64) -> ModelAnswer {
        ModelAnswer {
            content: content.into(),
            tool_calls: calls,
            tokens: Some(tokens),
            usage: Usage::default(),
        }
    }

    fn ok(id: &str, text: &str) -> ToolResult {
        ToolResult {
            call_id: id.into(),
            outcome: Ok(text.into()),
        }
    }

    fn start(max_steps: u32) -> ToolLoop {
        let mut l = ToolLoop::new(
            vec![Message::new("system", "s"), Message::new("user", "q")],
            max_steps,
        );
        assert_eq!(
            l.start().unwrap(),
            Action::CallModel {
                tool_choice_none: max_steps == 1
            }
        );
        l
    }

    fn finished(a: Action) -> Finished {
        match a {
            Action::Finish(f) => f,
            other => panic!("not finished: {other:?}"),
        }
    }

    #[test]
    fn no_tools_is_one_model_call() {
        let mut l = start(8);
        let f = finished(l.on_answer(answer("hi", vec![], 7)).unwrap());
        assert_eq!(f.response, "hi");
        assert_eq!(f.new_messages, vec![Message::new("assistant", "hi")]);
        assert_eq!((f.steps, f.tokens_used), (1, 7));
        assert!(f.calls.is_empty());
    }

    #[test]
    fn one_call_then_the_answer() {
        let mut l = start(8);
        let c = call("call_1", "lookup", r#"{"id":"42"}"#);
        let a = l.on_answer(answer("", vec![c.clone()], 10)).unwrap();
        assert_eq!(a, Action::RunTools(vec![c.clone()]));
        let a = l.on_results(vec![ok("call_1", "shipped")]).unwrap();
        assert_eq!(
            a,
            Action::CallModel {
                tool_choice_none: false
            }
        );
        // The model sees its call and the result.
        let seen = l.messages();
        assert_eq!(seen[2].tool_calls.as_deref(), Some(&[c.clone()][..]));
        assert_eq!(seen[3].role, "tool");
        assert_eq!(seen[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(seen[3].content, "shipped");
        let f = finished(l.on_answer(answer("It shipped.", vec![], 5)).unwrap());
        assert_eq!(f.response, "It shipped.");
        assert_eq!(
            f.new_messages.len(),
            3,
            "assistant calls, tool result, answer"
        );
        assert_eq!((f.steps, f.tokens_used), (2, 15));
        assert_eq!(
            f.calls,
            vec![CallRecord {
                call: c,
                outcome: Ok("shipped".into())
            }]
        );
    }

    #[test]
    fn parallel_calls_come_back_in_call_order() {
        let mut l = start(8);
        let calls = vec![
            call("a", "t1", "{}"),
            call("b", "t2", "{}"),
            call("c", "t3", "{}"),
        ];
        l.on_answer(answer("", calls, 1)).unwrap();
        // They finished in another order.
        l.on_results(vec![ok("c", "3"), ok("a", "1"), ok("b", "2")])
            .unwrap();
        let tool_ids: Vec<_> = l
            .messages()
            .iter()
            .filter_map(|m| m.tool_call_id.clone())
            .collect();
        assert_eq!(tool_ids, ["a", "b", "c"]);
        let f = finished(l.on_answer(answer("done", vec![], 1)).unwrap());
        let order: Vec<_> = f.calls.iter().map(|r| r.call.id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn errors_are_fed_back_to_the_model() {
        let mut l = start(8);
        l.on_answer(answer("", vec![call("x", "broken", "not json")], 1))
            .unwrap();
        let failed = ToolResult {
            call_id: "x".into(),
            outcome: Err("arguments are not a JSON object".into()),
        };
        let a = l.on_results(vec![failed]).unwrap();
        assert_eq!(
            a,
            Action::CallModel {
                tool_choice_none: false
            }
        );
        let last = l.messages().last().unwrap();
        assert_eq!(last.role, "tool");
        let v: serde_json::Value = serde_json::from_str(&last.content).unwrap();
        assert_eq!(v["error"], "arguments are not a JSON object");
    }

    #[test]
    fn max_steps_ends_with_tool_choice_none_and_drops_the_last_calls() {
        let mut l = start(2);
        l.on_answer(answer("", vec![call("1", "t", "{}")], 1))
            .unwrap();
        let a = l.on_results(vec![ok("1", "r")]).unwrap();
        assert_eq!(
            a,
            Action::CallModel {
                tool_choice_none: true
            },
            "the last step"
        );
        // It still asks for a tool: the turn ends with its text, the call neither run nor kept.
        let f = finished(
            l.on_answer(answer("partial", vec![call("2", "t", "{}")], 1))
                .unwrap(),
        );
        assert_eq!(f.response, "partial");
        assert_eq!(f.steps, 2);
        assert_eq!(f.calls.len(), 1);
        assert!(
            f.new_messages.last().unwrap().tool_calls.is_none(),
            "the dropped calls are not stored"
        );
        // One step allowed: the first call already says none.
        let mut l = start(1);
        let f = finished(
            l.on_answer(answer("only", vec![call("z", "t", "{}")], 1))
                .unwrap(),
        );
        assert_eq!((f.response.as_str(), f.steps), ("only", 1));
    }

    #[test]
    fn tool_turns_are_stored_and_sent_in_openai_wire_shape() {
        let m = Message::assistant_calls("", vec![call("call_1", "lookup", r#"{"id":"42"}"#)]);
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "lookup", "arguments": "{\"id\":\"42\"}"}}]})
        );
        let t = Message::tool_result("call_1", "shipped");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"role": "tool", "content": "shipped", "tool_call_id": "call_1"})
        );
        // Plain messages look as they always did, and what was stored before still reads.
        let plain = Message::new("user", "hi");
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
        let old: Message = serde_json::from_str(r#"{"role":"user","content":"hi"}"#).unwrap();
        assert_eq!(old, plain);
        let back: Message = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn cancelled_mid_call_hands_out_nothing_and_misuse_is_an_error() {
        let mut l = start(8);
        l.on_answer(answer("", vec![call("1", "slow", "{}")], 1))
            .unwrap();
        // The driver drops the machine while the tool runs: no Finish, so nothing to store.
        // Out-of-order events are refused rather than guessed at.
        let mut again = l.clone();
        assert!(again.on_answer(answer("x", vec![], 1)).is_err());
        let mut wrong = l.clone();
        assert!(wrong.on_results(vec![ok("other", "r")]).is_err());
        let mut short = l.clone();
        assert!(short.on_results(vec![]).is_err());
        drop(l);
    }
}
